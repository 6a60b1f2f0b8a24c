//! Reads a journal directory to the end with the agent's journal reader and prints how many
//! entries matched and the CPU it took — the reader's share of the telemetry bench
//! (scripts/bench.d/telemetry), next to `journalctl` over the same files.
//!
//! Usage: `journal_scan DIR [IDENTIFIER]` (default identifier `bench`).

use std::path::PathBuf;
use std::sync::Arc;

use hybrid_agent::telemetry::journal::{Filter, JournalReader};

fn cpu_seconds() -> f64 {
    hybrid_agent::telemetry::metrics::self_usage()
        .map(|(_, cpu)| cpu)
        .unwrap_or(0.0)
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: journal_scan DIR [IDENTIFIER]")?);
    let ident = args.next().unwrap_or_else(|| "bench".into());
    let filter = Filter {
        names: vec![(ident.clone(), Arc::from(ident.as_str()))],
        max_priority: 7,
    };
    let mut reader = JournalReader::new(vec![dir], None);
    let mut out = Vec::with_capacity(2000);
    let (mut n, mut bytes) = (0usize, 0usize);
    loop {
        let p = reader
            .poll(&filter, &mut out, 2000)
            .map_err(|e| e.to_string())?;
        n += out.len();
        bytes += out.iter().map(|r| r.message.len()).sum::<usize>();
        out.clear();
        if p.scanned == 0 {
            break;
        }
    }
    println!("SCANNED {n} {bytes} {:.3}", cpu_seconds());
    Ok(())
}
