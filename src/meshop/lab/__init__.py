"""The lab: hosts made of network namespaces on one machine, and the relays on their links.

Test hosts for what crosses a network (issue 24): each host is a network namespace with
its own address on a bridge, so a process there reaches others only over a real (virtual)
link, which relays can delay or cut. Needs root (CAP_NET_ADMIN).
"""
