//! `hybrid-agent`: join an on-prem or edge Linux machine to Amazon EKS as a hybrid node and keep
//! it healthy.
//!
//! This file only parses the command line, sets up logging, runs the command and maps the outcome
//! to an exit code; everything else lives in the library (`hybrid_agent::cli`). Configuration is
//! described by `hybrid-agent --help`, `hybrid-agent config show` and `examples/config.toml`;
//! exit codes by `hybrid_agent::exit::ExitCode` (also printed at the end of `--help`).

use std::process::ExitCode as ProcessExitCode;

use clap::Parser;
use hybrid_agent::cli::{self, Cli};
use hybrid_agent::config::Env;
use hybrid_agent::exit::ExitCode;
use hybrid_agent::logging;

fn main() -> ProcessExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version print to stdout and succeed; every other clap error is a usage
            // error, which must not use clap's default 2 (that means "not built yet" here).
            let code = if err.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            };
            // Nothing more can be done if the terminal is gone.
            let _ = err.print();
            return code.into();
        }
    };
    let env = Env::from_process();
    let level = logging::level(cli.global.verbose, cli.global.quiet);
    if let Err(err) = logging::init(
        cli.global.log_format,
        level,
        cli.global.log_target,
        env.get(logging::JOURNAL_STREAM_VAR),
    ) {
        eprintln!("error: {err}");
        return ExitCode::Failure.into();
    }
    match cli::run(&cli, &env, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::Success.into(),
        Err(err) => {
            cli::report(&err, cli.global.log_format, &mut std::io::stderr().lock());
            err.exit_code().into()
        }
    }
}
