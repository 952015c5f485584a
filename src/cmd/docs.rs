//! `vmxray completions SHELL` and `vmxray man`: shell completion scripts and man pages generated
//! from the same clap definitions that parse the arguments, so they never disagree with the
//! binary that prints them.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments of `vmxray completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `vmxray man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Write `vmxray.1` and one page per subcommand (`vmxray-scan.1`, ...) into this directory
    /// instead of printing a page.
    #[arg(short, long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print this subcommand's page instead of the main one (without --out).
    #[arg(value_name = "COMMAND", conflicts_with = "out")]
    pub command: Option<String>,
}

/// Prints the completion script for `args.shell` to stdout.
pub fn completions(args: CompletionsArgs, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    let name = cli.get_name().to_owned();
    let mut out = io::BufWriter::new(io::stdout().lock());
    clap_complete::generate(args.shell, &mut cli, name, &mut out);
    out.flush().context("Cannot write the completion script")?;
    Ok(ExitCode::SUCCESS)
}

/// Prints one man page to stdout, or writes them all into `--out`.
pub fn man(args: ManArgs, cli: clap::Command) -> anyhow::Result<ExitCode> {
    let mut cli = cli.disable_help_subcommand(true);
    // Building fills in the subcommands' display names (`vmxray-scan`), which name their pages.
    cli.build();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("Cannot create {}", dir.display()))?;
        clap_mangen::generate_to(cli.clone(), dir)
            .with_context(|| format!("Cannot write the man pages into {}", dir.display()))?;
        let pages = 1 + cli.get_subcommands().count();
        eprintln!("vmxray: {pages} man pages in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let page = match &args.command {
        None => cli,
        Some(name) => match cli.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                let names: Vec<&str> = cli.get_subcommands().map(clap::Command::get_name).collect();
                anyhow::bail!("No subcommand {name:?}; subcommands: {}", names.join(", "));
            }
        },
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    clap_mangen::Man::new(page).render(&mut out).context("Cannot write the man page")?;
    out.flush().context("Cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}
