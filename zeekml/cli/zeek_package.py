"""``zeekml zeek-package``: where the Zeek package is, and how to load it."""
from __future__ import annotations

import click

from zeekml._core.resources import zeek_scripts_dir


@click.command("zeek-package")
@click.option("--path", "path_only", is_flag=True,
              help="Print only the scripts directory, for `zeek -r x.pcap $(zeekml zeek-package --path)`.")
def zeek_package(path_only: bool) -> None:
    """Show where zeekml's Zeek scripts are and how to load them."""
    path = zeek_scripts_dir()
    if path_only:
        click.echo(path)
        return
    click.echo(f"zeekml Zeek package: {path}")
    click.echo("")
    click.echo("Load it for one run:")
    click.echo(f"  zeek -r trace.pcap {path}")
    click.echo("Feed zeekml's verdicts back as notices:")
    click.echo(f"  zeek -i eth0 {path} ZeekML::verdict_file=/var/lib/zeekml/verdicts.log")
    click.echo("  zeekml watch ... --zeek-feedback /var/lib/zeekml/verdicts.log")
    click.echo("Verdict notices only, without the per-packet flow features:")
    click.echo(f"  zeek -i eth0 {path}/verdicts.zeek")


COMMANDS = [zeek_package]
