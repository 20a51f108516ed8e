"""`python -m dnsep_cli`: the `dnsep` command, for environments without its console script."""

from dnsep_cli.cli import main

main()
