from dnsep_cli.cli import main

main()
