//! The process exit codes of `hybrid-agent`, documented in one place.
//!
//! Scripts and configuration management (Ansible, cloud-init, Packer) branch on the exit code of
//! `hybrid-agent join` and friends, so each failure class gets its own stable number. The table
//! printed at the end of `hybrid-agent --help` is generated from the same macro invocation that
//! defines the enum, so the documentation cannot drift from the code.
//!
//! Numbering: 0–9 are general outcomes, 10–29 are credential registration failures of `join`
//! (after any of them nothing was written to the host), 64 is
//! `EX_USAGE` from BSD `sysexits.h`, which shells and service managers already know.

use std::fmt::Write as _;

macro_rules! exit_codes {
    ($( $name:ident = $code:literal => $meaning:literal, )*) => {
        /// Exit code of a `hybrid-agent` invocation. Each variant's doc line is also its entry in
        /// the `--help` table.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ExitCode {
            $( #[doc = $meaning] $name = $code, )*
        }

        impl ExitCode {
            /// Every exit code, in numeric order.
            pub const ALL: &'static [ExitCode] = &[$(ExitCode::$name),*];

            /// The one-line meaning of this code (the same text as its doc comment).
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ExitCode::$name => $meaning,)*
                }
            }
        }
    };
}

exit_codes! {
    Success = 0 => "Success.",
    ConfigInvalid = 1 => "Invalid configuration or input (all problems listed); nothing changed.",
    NotBuilt = 2 => "Capability not built into this version yet; nothing was changed.",
    Failure = 3 => "An operation failed (I/O, unexpected state); see the message.",
    NotJoined = 4 => "run, upgrade: this host has not joined; run `hybrid-agent join`.",
    Locked = 5 => "Another join/leave/upgrade, or a second run, is running; nothing changed.",
    ActivationExpired = 10 => "join: the SSM activation has expired; create a new one.",
    ActivationInvalid = 11 => "join: SSM rejected the activation id/code (or its region).",
    RegistrationLimit = 12 => "join: the activation's registration limit is reached.",
    RegistrationNetwork = 13 => "join: the SSM or Roles Anywhere endpoint is unreachable.",
    RegistrationTls = 14 => "join: TLS to the endpoint failed (untrusted CA, clock skew).",
    Usage = 64 => "Usage error: unknown flag, missing or conflicting argument (EX_USAGE).",
}

impl ExitCode {
    /// The numeric value the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A plain-text table of every code, for `--help` and for pasting into the README.
    pub fn table() -> String {
        let mut out = String::from("Exit codes:\n");
        for code in Self::ALL {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "  {:>3}  {}", code.code(), code.meaning());
        }
        out
    }

    /// The same table as Markdown, for the README.
    pub fn markdown_table() -> String {
        let mut out = String::from("| Code | Meaning |\n| ---: | --- |\n");
        for code in Self::ALL {
            let _ = writeln!(out, "| {} | {} |", code.code(), code.meaning());
        }
        out
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        let numbers: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        let mut sorted = numbers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            numbers, sorted,
            "exit codes must be unique and listed in order"
        );
    }

    #[test]
    fn usage_is_ex_usage_not_clap_default() {
        // clap exits 2 on usage errors by default; 2 means "not built yet" here.
        assert_eq!(ExitCode::Usage.code(), 64);
        assert_eq!(ExitCode::NotBuilt.code(), 2);
    }

    #[test]
    fn table_lines_fit_an_80_column_terminal() {
        // clap re-wraps long help lines without indenting them, which garbles the table.
        for line in ExitCode::table().lines() {
            assert!(line.chars().count() <= 80, "too long for --help: {line}");
        }
    }

    #[test]
    fn table_lists_every_code() {
        let table = ExitCode::table();
        for code in ExitCode::ALL {
            assert!(
                table.contains(code.meaning()),
                "{code:?} missing from table"
            );
        }
        assert_eq!(
            ExitCode::markdown_table().lines().count(),
            ExitCode::ALL.len() + 2
        );
    }
}
