//! Whether the kernel's clock is synchronised by NTP, as `nodeadm debug` checks it
//! (`internal/system/ntp.go`: `chronyc tracking`, then `timedatectl status`), read without
//! running either program where systemd runs:
//!
//! 1. systemd-timedated on the system bus (`org.freedesktop.timedate1`, bus-activated):
//!    `NTPSynchronized` is the kernel's own state, read with adjtimex(2) at the moment of the
//!    call (no `STA_UNSYNC` in its status and a maximum error under 16 s), whichever daemon
//!    (chronyd, systemd-timesyncd, ntpd) disciplines the clock; `NTP` says whether a
//!    time-synchronisation service is enabled. This is what `timedatectl` prints as "System
//!    clock synchronized" and "NTP service".
//! 2. Without it (no systemd, or a container without a bus), `chronyc tracking` as nodeadm
//!    reads it: a reference that is not the host itself and "Leap status : Normal".
//!
//! This is not the skew against an endpoint's `Date` header (doctor's `clock` check): a clock
//! can be right today and drift tomorrow when nothing disciplines it.

use std::path::Path;
use std::time::Duration;

/// What the host says about its clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSync {
    Synchronized {
        /// Who said so (`systemd-timedated`, `chronyc tracking`).
        source: String,
        detail: String,
    },
    NotSynchronized {
        source: String,
        /// Whether a synchronisation service is enabled (timedated's `NTP`), where known.
        service_enabled: Option<bool>,
        detail: String,
    },
    /// Nothing to ask.
    Unknown(String),
}

/// How long the bus and chronyc may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Reference ids chronyc shows when it follows nothing but the host itself (nodeadm's list).
const LOCAL_REFERENCES: [&str; 3] = ["(00000000)", "(0.0.0.0)", "(127.0.0.1)"];

/// Asks timedated on the system bus under `root`, then chronyc.
pub async fn read(root: &Path) -> TimeSync {
    let bus = crate::supervise::systemd::system_bus_address(root);
    let why_not_timedated = match tokio::time::timeout(CALL_TIMEOUT, timedated(&bus)).await {
        Ok(Ok((synced, ntp))) => {
            let detail = format!(
                "NTPSynchronized={}, NTP service {}",
                yes_no(synced),
                if ntp { "enabled" } else { "not enabled" }
            );
            let source = "systemd-timedated".to_owned();
            return if synced {
                TimeSync::Synchronized { source, detail }
            } else {
                TimeSync::NotSynchronized {
                    source,
                    service_enabled: Some(ntp),
                    detail,
                }
            };
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
    };
    match tokio::time::timeout(
        CALL_TIMEOUT,
        tokio::process::Command::new("chronyc")
            .arg("tracking")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    {
        Ok(Ok(out)) if out.status.success() => {
            chrony_tracking(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(Ok(out)) => TimeSync::Unknown(format!(
            "systemd-timedated cannot be asked ({why_not_timedated}) and `chronyc tracking` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => TimeSync::Unknown(format!(
            "systemd-timedated cannot be asked ({why_not_timedated}) and chronyc is not installed"
        )),
        Ok(Err(e)) => TimeSync::Unknown(format!(
            "systemd-timedated cannot be asked ({why_not_timedated}) and chronyc cannot run: {e}"
        )),
        Err(_) => TimeSync::Unknown(format!(
            "systemd-timedated cannot be asked ({why_not_timedated}) and `chronyc tracking` did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        )),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// timedated's `NTPSynchronized` and `NTP`.
async fn timedated(address: &str) -> zbus::Result<(bool, bool)> {
    let conn = zbus::connection::Builder::address(address)
        .method_timeout(CALL_TIMEOUT)
        .build()
        .await?;
    let proxy: zbus::Proxy<'_> = zbus::proxy::Builder::new(&conn)
        .destination("org.freedesktop.timedate1")
        .path("/org/freedesktop/timedate1")
        .interface("org.freedesktop.timedate1")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let synced: bool = proxy.get_property("NTPSynchronized").await?;
    let ntp: bool = proxy.get_property("NTP").await?;
    Ok((synced, ntp))
}

/// `chronyc tracking`'s answer, read as nodeadm reads it.
pub fn chrony_tracking(text: &str) -> TimeSync {
    let mut reference = None;
    let mut leap = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "Reference ID" => reference = Some(value.trim().to_owned()),
            "Leap status" => leap = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let source = "chronyc tracking".to_owned();
    let reference_ok = reference.as_deref().is_some_and(|r| {
        let id = r.split_whitespace().nth(1).unwrap_or("");
        !r.is_empty() && !LOCAL_REFERENCES.contains(&id)
    });
    let leap_ok = leap.as_deref() == Some("Normal");
    let detail = format!(
        "reference {}, leap status {}",
        reference.as_deref().unwrap_or("none"),
        leap.as_deref().unwrap_or("unknown")
    );
    if reference_ok && leap_ok {
        TimeSync::Synchronized { source, detail }
    } else {
        TimeSync::NotSynchronized {
            source,
            service_enabled: Some(true),
            detail,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chrony_following_a_server_is_synchronised_and_following_itself_is_not() {
        let synced = "Reference ID    : A9FEA97B (169.254.169.123)\nStratum         : 4\nLeap status     : Normal\n";
        assert!(matches!(
            chrony_tracking(synced),
            TimeSync::Synchronized { .. }
        ));
        let local = "Reference ID    : 7F7F0101 ()\nLeap status     : Not synchronised\n";
        assert!(matches!(
            chrony_tracking(local),
            TimeSync::NotSynchronized { .. }
        ));
        let unset = "Reference ID    : 00000000 (00000000)\nLeap status     : Normal\n";
        match chrony_tracking(unset) {
            TimeSync::NotSynchronized { detail, .. } => {
                assert_eq!(detail, "reference 00000000 (00000000), leap status Normal")
            }
            other => panic!("{other:?}"),
        }
    }
}
