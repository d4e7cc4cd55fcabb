from meshop.cli import main

main()
