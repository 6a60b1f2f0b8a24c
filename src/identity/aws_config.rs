//! The AWS config file of an IAM Roles Anywhere node (NodeConfig
//! `spec.hybrid.iamRolesAnywhere.awsConfigPath`, default `/etc/aws/hybrid/config`).
//!
//! nodeadm writes this file with profiles whose `credential_process` runs AWS's
//! `aws_signing_helper credential-process …`, and points kubelet's aws-iam-authenticator at it
//! with `AWS_CONFIG_FILE`/`AWS_PROFILE`, so kubelet gets fresh credentials on demand even when
//! no refresh daemon runs. We keep the file, its profiles and the kubeconfig env exactly so, but
//! the command is our own binary (`hybrid-agent credential-process`, see
//! [`crate::identity::credential_process`]), which signs CreateSession with the node's
//! certificate natively: no second binary to install, and the same signer `run` uses.
//!
//! The file holds no secret (only paths, ARNs and the command), so it is 0644 as nodeadm's.

use std::path::{Path, PathBuf};

use crate::identity::atomic::{self, AtomicWriteError};

/// Where the file goes when the NodeConfig names none. nodeadm
/// internal/iamrolesanywhere/aws_config.go (`DefaultAWSConfigPath`).
pub const DEFAULT_AWS_CONFIG_PATH: &str = "/etc/aws/hybrid/config";
/// The profile kubelet's authenticator uses. nodeadm internal/iamrolesanywhere/aws_config.go
/// (`ProfileName`).
pub const PROFILE_NAME: &str = "default";
/// Second profile with the same command, kept by nodeadm "for backwards compatibility".
/// nodeadm internal/iamrolesanywhere/aws_config.tpl.
pub const LEGACY_PROFILE_NAME: &str = "hybrid";
/// Mode of the file. nodeadm internal/iamrolesanywhere/aws_config.go (`os.WriteFile(…, 0o644)`).
pub const FILE_MODE: u32 = 0o644;
/// Mode of a directory created for it: readable, as the file is.
const DIR_MODE: u32 = 0o755;
/// The subcommand the profiles run.
pub const SUBCOMMAND: &str = "credential-process";

/// Everything the `credential_process` command line carries: the command must work from the
/// file alone, with no agent state (a node whose state was lost, or whose daemon never ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialProcess {
    /// Absolute path of the agent binary.
    pub program: PathBuf,
    /// `--root` when it is not `/` (a sandbox): the agent config and state are read beneath it.
    pub root: Option<PathBuf>,
    /// `--config` when join was given an agent config other than the default one.
    pub agent_config: Option<PathBuf>,
    pub certificate_path: PathBuf,
    pub private_key_path: PathBuf,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
    /// `roleSessionName`: the node name, as nodeadm's `--role-session-name`.
    pub session_name: String,
    pub region: String,
    /// The IAM Roles Anywhere endpoint when it was overridden at join (`AWS_ENDPOINT_URL*` or
    /// `[endpoints]`): kubelet's environment has none of those variables.
    pub endpoint: Option<String>,
}

impl CredentialProcess {
    /// The argument vector (program first).
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.program.display().to_string()];
        if let Some(root) = &self.root {
            v.extend(["--root".to_owned(), root.display().to_string()]);
        }
        if let Some(cfg) = &self.agent_config {
            v.extend(["--config".to_owned(), cfg.display().to_string()]);
        }
        v.push(SUBCOMMAND.to_owned());
        let pairs: [(&str, String); 8] = [
            ("--certificate", self.certificate_path.display().to_string()),
            ("--private-key", self.private_key_path.display().to_string()),
            ("--trust-anchor-arn", self.trust_anchor_arn.clone()),
            ("--profile-arn", self.profile_arn.clone()),
            ("--role-arn", self.role_arn.clone()),
            ("--role-session-name", self.session_name.clone()),
            ("--region", self.region.clone()),
            ("--endpoint", self.endpoint.clone().unwrap_or_default()),
        ];
        for (flag, value) in pairs {
            if !value.is_empty() {
                v.extend([flag.to_owned(), value]);
            }
        }
        v
    }

    /// The command line as the config file holds it. The Go SDK (aws-iam-authenticator) runs it
    /// with `sh -c`, botocore splits it with `shlex`: POSIX shell quoting suits both.
    pub fn command_line(&self) -> String {
        self.argv()
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `arg` as one POSIX shell word: unchanged when it has only safe characters, else in single
/// quotes (a single quote inside becomes `'\''`).
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | ':' | '=' | ',' | '@')
        });
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The file's text: nodeadm's two profiles (internal/iamrolesanywhere/aws_config.tpl), each with
/// the region and our command.
pub fn render(cp: &CredentialProcess) -> String {
    let line = cp.command_line();
    let mut out = String::from(
        "# Written by hybrid-agent join (IAM Roles Anywhere). kubelet's aws-iam-authenticator reads\n\
         # it through AWS_CONFIG_FILE/AWS_PROFILE; `hybrid-agent leave` removes it.\n",
    );
    for (i, profile) in [PROFILE_NAME, LEGACY_PROFILE_NAME].iter().enumerate() {
        if i > 0 {
            out.push_str("\n# kept for tools that used nodeadm's `hybrid` profile\n");
        }
        out.push_str(&format!(
            "[profile {profile}]\nregion = {}\ncredential_process = {line}\n",
            cp.region
        ));
    }
    out
}

/// Writes the file atomically with [`FILE_MODE`].
pub fn write(path: &Path, cp: &CredentialProcess) -> Result<(), AtomicWriteError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        atomic::ensure_dir(dir, DIR_MODE)?;
    }
    atomic::write_atomic(path, render(cp).as_bytes(), FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CredentialProcess {
        CredentialProcess {
            program: "/usr/bin/hybrid-agent".into(),
            root: None,
            agent_config: None,
            certificate_path: "/etc/iam/pki/server.pem".into(),
            private_key_path: "/etc/iam/pki/server.key".into(),
            trust_anchor_arn: "arn:aws:rolesanywhere:us-west-2:123456789012:trust-anchor/ta".into(),
            profile_arn: "arn:aws:rolesanywhere:us-west-2:123456789012:profile/p".into(),
            role_arn: "arn:aws:iam::123456789012:role/node".into(),
            session_name: "edge-node-1".into(),
            region: "us-west-2".into(),
            endpoint: None,
        }
    }

    #[test]
    fn renders_nodeadms_two_profiles_with_our_command() {
        let text = render(&sample());
        let line = "credential_process = /usr/bin/hybrid-agent credential-process \
            --certificate /etc/iam/pki/server.pem --private-key /etc/iam/pki/server.key \
            --trust-anchor-arn arn:aws:rolesanywhere:us-west-2:123456789012:trust-anchor/ta \
            --profile-arn arn:aws:rolesanywhere:us-west-2:123456789012:profile/p \
            --role-arn arn:aws:iam::123456789012:role/node --role-session-name edge-node-1 \
            --region us-west-2\n";
        assert_eq!(text.matches(line).count(), 2, "{text}");
        assert!(
            text.contains("[profile default]\nregion = us-west-2\n"),
            "{text}"
        );
        assert!(
            text.contains("[profile hybrid]\nregion = us-west-2\n"),
            "{text}"
        );
    }

    #[test]
    fn sandbox_root_config_and_endpoint_are_passed() {
        let mut cp = sample();
        cp.root = Some("/tmp/a b".into());
        cp.agent_config = Some("/etc/x.toml".into());
        cp.endpoint = Some("http://127.0.0.1:4566".into());
        let argv = cp.argv();
        assert_eq!(
            &argv[..6],
            [
                "/usr/bin/hybrid-agent",
                "--root",
                "/tmp/a b",
                "--config",
                "/etc/x.toml",
                "credential-process"
            ]
        );
        assert_eq!(
            argv[argv.len() - 2..],
            ["--endpoint", "http://127.0.0.1:4566"]
        );
        assert!(cp.command_line().contains(" --root '/tmp/a b' "));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b-c_d.pem"), "/a/b-c_d.pem");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }
}
