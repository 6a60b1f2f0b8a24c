//! Minimal PEM (RFC 7468) encoding and decoding for the few objects the agent handles: its own
//! PKCS#8 instance key and the X.509 certificates and keys an operator gives IAM Roles Anywhere.
//!
//! Small enough to own outright rather than pull a crate for it; strict about the boundaries,
//! lenient about whitespace and text around the blocks (explanatory text before a certificate
//! is common in files exported by CAs).

use base64::Engine;

const LINE: usize = 64;

/// One decoded block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and DER contents.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

// Contents may be key material: never print them.
impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({}, {} bytes)", self.label, self.der.len())
    }
}

/// What is wrong with a PEM text (no contents quoted: they may be a private key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("no PEM block found (expected a `-----BEGIN ...-----` line)")]
    Empty,
    #[error("block `{label}` has no matching `-----END {label}-----` line")]
    Unterminated { label: String },
    #[error("block `{label}` is not valid base64")]
    Base64 { label: String },
}

pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(LINE) {
        // base64 output is ASCII, so each chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every block in `text`, in order.
pub fn decode_all(text: &str) -> Result<Vec<Block>, PemError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            // RFC 1421 headers (`Proc-Type: ...`) mean an encrypted legacy key: let the base64
            // decode fail on them rather than guess.
            body.push_str(l);
        }
        if !closed {
            return Err(PemError::Unterminated {
                label: label.to_string(),
            });
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PemError::Base64 {
                label: label.to_string(),
            })?;
        blocks.push(Block {
            label: label.to_string(),
            der,
        });
    }
    if blocks.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_surrounding_text() {
        let der: Vec<u8> = (0..200u8).collect();
        let text = format!(
            "Bag Attributes\n{}junk\n{}",
            encode("CERTIFICATE", &der),
            encode("PRIVATE KEY", &[1, 2, 3])
        );
        let blocks = decode_all(&text).expect("decode");
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[0],
            Block {
                label: "CERTIFICATE".into(),
                der
            }
        );
        assert_eq!(blocks[1].label, "PRIVATE KEY");
        assert_eq!(blocks[1].der, vec![1, 2, 3]);
        assert!(
            encode("X", &[0; 100])
                .lines()
                .all(|l| l.len() <= LINE || l.starts_with("-----"))
        );
    }

    #[test]
    fn errors() {
        assert_eq!(decode_all("nothing here"), Err(PemError::Empty));
        assert_eq!(
            decode_all("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(PemError::Unterminated {
                label: "CERTIFICATE".into()
            })
        );
        assert_eq!(
            decode_all("-----BEGIN X-----\n!!!\n-----END X-----\n"),
            Err(PemError::Base64 { label: "X".into() })
        );
    }
}
