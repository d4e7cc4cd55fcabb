"""Who is calling and what they may do: identity tokens (`tokens`), service identity and
call tokens (`identity`), NATS logins (`nats_auth`), revoked access tokens (`revocation`),
who may read `/metrics` (`scrape_token`) and operator-only endpoints (`loopback`).
"""
