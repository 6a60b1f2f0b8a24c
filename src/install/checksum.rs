//! SHA-256 checksums: the GNU coreutils text format artifacts are published with, and a
//! streaming hasher so a file is hashed while it is written, never read twice.

use std::fmt;
use std::io::Read;
use std::path::Path;

/// Length of a hex SHA-256 digest.
const HEX_LEN: usize = 64;
/// Read size when hashing a file.
const CHUNK: usize = 256 * 1024;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != HEX_LEN {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    /// Lowercase hex.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Hashes a whole file.
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        let mut f = std::fs::File::open(path)?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    }

    /// Hashes bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Sha256::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("`{text}` is not a hex SHA-256 digest"))
        })
    }
}

/// Incremental SHA-256 (aws-lc-rs: uses the CPU's SHA extensions where present).
pub struct Hasher(aws_lc_rs::digest::Context);

impl Hasher {
    pub fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256 {
        let digest = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Sha256(out)
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Finds the digest for `file_name` in GNU `sha256sum` output: lines of `<hex>  <name>` (text
/// mode) or `<hex> *<name>` (binary mode). A file with a single line is accepted whatever name it
/// gives (published `.sha256` files often name the build path, not the download name); a bare
/// digest with no name is accepted too.
pub fn parse_gnu(text: &str, file_name: &str) -> Result<Sha256, String> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (digest, name) = match line.split_once(char::is_whitespace) {
            Some((d, rest)) => (d, Some(rest.trim_start().trim_start_matches('*'))),
            None => (line, None),
        };
        let Some(sum) = Sha256::from_hex(digest) else {
            return Err(format!(
                "line `{}` does not start with a 64-digit hex SHA-256",
                line.chars().take(80).collect::<String>()
            ));
        };
        entries.push((sum, name));
    }
    match entries.as_slice() {
        [] => Err("the checksum file is empty".to_owned()),
        [(sum, _)] => Ok(*sum),
        many => many
            .iter()
            .find(|(_, name)| {
                name.is_some_and(|n| n == file_name || n.rsplit('/').next() == Some(file_name))
            })
            .map(|(sum, _)| *sum)
            .ok_or_else(|| format!("none of its {} lines is for `{file_name}`", many.len())),
    }
}

/// One line of GNU `sha256sum` output (text mode).
pub fn gnu_line(sum: Sha256, name: &str) -> String {
    format!("{sum}  {name}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_match_known_vectors() {
        assert_eq!(Sha256::of_bytes(b"").to_hex(), EMPTY);
        assert_eq!(
            Sha256::of_bytes(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn gnu_formats() {
        let e = Sha256::from_hex(EMPTY).expect("hex");
        assert_eq!(parse_gnu(&format!("{EMPTY}  kubelet\n"), "kubelet"), Ok(e));
        assert_eq!(parse_gnu(&format!("{EMPTY} *kubelet\n"), "kubelet"), Ok(e));
        assert_eq!(parse_gnu(&format!("{EMPTY}\n"), "kubelet"), Ok(e));
        assert_eq!(
            parse_gnu(&format!("{EMPTY}  _output/bin/kubelet\n"), "kubelet"),
            Ok(e)
        );
        let abc = Sha256::of_bytes(b"abc");
        let two = format!("{abc}  kubectl\n{EMPTY}  dist/kubelet\n");
        assert_eq!(parse_gnu(&two, "kubelet"), Ok(e));
        assert!(parse_gnu(&two, "other").is_err());
        assert!(parse_gnu("", "kubelet").is_err());
        assert!(parse_gnu("<html>not found</html>", "kubelet").is_err());
        assert!(parse_gnu(&format!("{}  kubelet", &EMPTY[..63]), "kubelet").is_err());
    }
}
