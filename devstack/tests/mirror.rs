//! The artifact mirror over plain HTTP: whole files, HEAD, ranges, checksum companions, the
//! generated nodeadm-style manifest, the corrupt/cut fault knobs and path traversal.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use hybrid_devstack::{Config, Devstack};

struct Mirror {
    ds: Devstack,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// Deterministic, non-repeating-looking content of `len` bytes.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed))
        .collect()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

const KUBELET: &str = "1.31.2/amd64/kubelet";
const KUBELET_LEN: usize = 300_000;

/// A mirror directory with two Kubernetes patch releases, two architectures, an IAM Roles
/// Anywhere helper, an on-disk checksum, and a secret next to (outside) the mirror.
fn mirror() -> Mirror {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("mirror");
    write(&root, KUBELET, &content(KUBELET_LEN, 1));
    write(&root, "1.31.2/arm64/kubelet", &content(1000, 2));
    write(&root, "1.31.2/amd64/kubectl", &content(2000, 3));
    write(
        &root,
        "1.31.2/amd64/kubectl.sha256",
        b"0000000000000000000000000000000000000000000000000000000000000000  kubectl\n",
    );
    write(&root, "1.31.0/amd64/kubelet", &content(500, 4));
    write(&root, "1.30.8/amd64/kubelet", &content(600, 5));
    write(
        &root,
        "iam-roles-anywhere/1.4.0/amd64/aws_signing_helper",
        &content(700, 6),
    );
    write(dir.path(), "secret.txt", b"not for the mirror");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("escape"))
        .expect("symlink");
    let ds = Devstack::spawn(Config {
        mirror_dir: Some(root),
        ..Config::default()
    })
    .expect("start devstack");
    Mirror {
        ds,
        dir,
        http: reqwest::Client::new(),
    }
}

impl Mirror {
    fn url(&self, rel: &str) -> String {
        format!("{}/mirror/{rel}", self.ds.url)
    }
    fn file(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join("mirror").join(rel)).expect("read mirror file")
    }
    async fn get(&self, rel: &str) -> reqwest::Response {
        self.http
            .get(self.url(rel))
            .send()
            .await
            .expect("mirror answers")
    }
    async fn control(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::StatusCode {
        self.http
            .request(
                method,
                format!("{}/_devstack/{path_and_query}", self.ds.url),
            )
            .send()
            .await
            .expect("control answers")
            .status()
    }
    /// Sends a raw request line (clients normalise `..` away, so traversal needs raw TCP) and
    /// returns the status code.
    fn raw_status(&self, target: &str) -> u16 {
        let mut s = std::net::TcpStream::connect(self.ds.addr).expect("connect");
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.ds.addr
        )
        .expect("send");
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {resp:?}"))
    }
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("header {name} missing: {:?}", resp.headers()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_and_head_carry_length_etag_and_accept_ranges() {
    let m = mirror();
    let resp = m.get(KUBELET).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), KUBELET_LEN.to_string());
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    let etag = header(&resp, "etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(
        resp.bytes().await.expect("body").as_ref(),
        m.file(KUBELET).as_slice()
    );

    let head = m.http.head(m.url(KUBELET)).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), KUBELET_LEN.to_string());
    assert_eq!(header(&head, "etag"), etag);
    assert!(head.bytes().await.expect("no body").is_empty());

    let cached = m
        .http
        .get(m.url(KUBELET))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional GET");
    assert_eq!(cached.status(), 304);
    assert_eq!(m.get("1.31.2/amd64/nope").await.status(), 404);
    assert_eq!(
        m.get("1.31.2/amd64").await.status(),
        404,
        "directories are not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_resume_and_unsatisfiable_ranges_get_416() {
    let m = mirror();
    let file = m.file(KUBELET);
    let len = file.len();
    let range = |spec: &'static str| m.http.get(m.url(KUBELET)).header("range", spec).send();

    let resp = range("bytes=100000-").await.expect("open range");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        header(&resp, "content-range"),
        format!("bytes 100000-{}/{len}", len - 1)
    );
    assert_eq!(header(&resp, "content-length"), (len - 100_000).to_string());
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &file[100_000..]);

    let resp = range("bytes=10-19").await.expect("closed range");
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), format!("bytes 10-19/{len}"));
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &file[10..20]);

    let resp = range("bytes=-5").await.expect("suffix range");
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &file[len - 5..]);

    let resp = range("bytes=299990-400000")
        .await
        .expect("range past the end");
    assert_eq!(
        header(&resp, "content-range"),
        format!("bytes 299990-{}/{len}", len - 1)
    );
    assert_eq!(resp.bytes().await.expect("body").len(), 10);

    let resp = range("bytes=300000-").await.expect("range at the end");
    assert_eq!(resp.status(), 416);
    assert_eq!(header(&resp, "content-range"), format!("bytes */{len}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_companions_are_generated_in_gnu_format_unless_on_disk() {
    let m = mirror();
    let resp = m.get(&format!("{KUBELET}.sha256")).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert_eq!(text, format!("{}  kubelet\n", sha256_hex(&m.file(KUBELET))));
    // Served again from the cache, same answer.
    assert_eq!(
        m.get(&format!("{KUBELET}.sha256"))
            .await
            .text()
            .await
            .expect("body"),
        text
    );

    let on_disk = m
        .get("1.31.2/amd64/kubectl.sha256")
        .await
        .text()
        .await
        .expect("body");
    assert!(
        on_disk.starts_with("0000000000"),
        "a companion on disk wins: {on_disk}"
    );
    assert_eq!(m.get("1.31.2/amd64/nope.sha256").await.status(), 404);
}

#[derive(serde::Deserialize)]
struct Manifest {
    supported_eks_releases: Vec<EksRelease>,
    iam_roles_anywhere_releases: Vec<ToolRelease>,
}
#[derive(serde::Deserialize)]
struct EksRelease {
    major_minor_version: String,
    latest_patch_version: String,
    patch_releases: Vec<PatchRelease>,
}
#[derive(serde::Deserialize)]
struct PatchRelease {
    version: String,
    patch_version: String,
    release_date: String,
    artifacts: Vec<Artifact>,
}
#[derive(serde::Deserialize)]
struct ToolRelease {
    version: String,
    artifacts: Vec<Artifact>,
}
#[derive(serde::Deserialize, Debug, PartialEq)]
struct Artifact {
    name: String,
    arch: String,
    os: String,
    uri: String,
    checksum_uri: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_lists_artifacts_in_nodeadm_shape() {
    let m = mirror();
    let yaml = m
        .get("manifest.yaml")
        .await
        .text()
        .await
        .expect("manifest.yaml");
    let manifest: Manifest =
        serde_yaml_ng::from_str(&yaml).expect("manifest parses in nodeadm's shape");
    let minors: Vec<&str> = manifest
        .supported_eks_releases
        .iter()
        .map(|r| r.major_minor_version.as_str())
        .collect();
    assert_eq!(minors, ["1.31", "1.30"], "newest first");
    let r131 = &manifest.supported_eks_releases[0];
    assert_eq!(r131.latest_patch_version, "2");
    let versions: Vec<(&str, &str)> = r131
        .patch_releases
        .iter()
        .map(|p| (p.version.as_str(), p.patch_version.as_str()))
        .collect();
    assert_eq!(versions, [("1.31.0", "0"), ("1.31.2", "2")]);
    let p = &r131.patch_releases[1];
    assert_eq!(p.release_date.len(), 10, "YYYY-MM-DD: {}", p.release_date);
    let names: Vec<(&str, &str)> = p
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.arch.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("kubectl", "amd64"),
            ("kubelet", "amd64"),
            ("kubelet", "arm64")
        ],
        "checksum files are not artifacts"
    );
    let kubelet = &p.artifacts[1];
    assert_eq!(kubelet.os, "linux");
    assert_eq!(kubelet.uri, m.url(KUBELET));
    assert_eq!(kubelet.checksum_uri, format!("{}.sha256", m.url(KUBELET)));

    // The URIs work as given.
    let body = m
        .http
        .get(&kubelet.uri)
        .send()
        .await
        .expect("artifact")
        .bytes()
        .await
        .expect("body");
    let sum = m
        .http
        .get(&kubelet.checksum_uri)
        .send()
        .await
        .expect("checksum")
        .text()
        .await
        .expect("body");
    assert!(sum.starts_with(&sha256_hex(&body)));

    assert_eq!(manifest.iam_roles_anywhere_releases.len(), 1);
    assert_eq!(manifest.iam_roles_anywhere_releases[0].version, "1.4.0");
    assert_eq!(
        manifest.iam_roles_anywhere_releases[0].artifacts[0].name,
        "aws_signing_helper"
    );

    let json: serde_json::Value = m
        .get("manifest.json")
        .await
        .json()
        .await
        .expect("manifest.json");
    assert_eq!(
        json["supported_eks_releases"][0]["patch_releases"][1]["artifacts"][1]["uri"],
        m.url(KUBELET)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corrupt_knob_flips_one_byte_until_cleared() {
    let m = mirror();
    let file = m.file(KUBELET);
    assert_eq!(
        m.control(
            reqwest::Method::POST,
            &format!("mirror/corrupt?path={KUBELET}")
        )
        .await,
        200
    );
    for _ in 0..2 {
        let got = m.get(KUBELET).await.bytes().await.expect("body");
        assert_eq!(got.len(), file.len(), "same length");
        let diffs: Vec<usize> = (0..file.len()).filter(|&i| got[i] != file[i]).collect();
        assert_eq!(
            diffs,
            [file.len() / 2],
            "exactly one byte, in the middle, every time"
        );
    }
    // The companion still describes the true content, so a verifying client notices.
    let sum = m
        .get(&format!("{KUBELET}.sha256"))
        .await
        .text()
        .await
        .expect("body");
    assert!(sum.starts_with(&sha256_hex(&file)));
    // A range that covers the flipped byte is corrupted at the right place too.
    let part = m
        .http
        .get(m.url(KUBELET))
        .header("range", "bytes=149990-150009")
        .send()
        .await
        .expect("range")
        .bytes()
        .await
        .expect("body");
    assert_eq!(part[10], file[150_000] ^ 0xff);

    assert_eq!(
        m.control(
            reqwest::Method::DELETE,
            &format!("mirror/corrupt?path={KUBELET}")
        )
        .await,
        200
    );
    assert_eq!(
        m.get(KUBELET).await.bytes().await.expect("body").as_ref(),
        file.as_slice()
    );

    // `times=1`: one bad download, then good ones — what a retrying installer meets.
    assert_eq!(
        m.control(
            reqwest::Method::POST,
            &format!("mirror/corrupt?path=/mirror/{KUBELET}&offset=7&times=1")
        )
        .await,
        200
    );
    let bad = m.get(KUBELET).await.bytes().await.expect("body");
    assert_eq!(bad[7], file[7] ^ 0xff);
    assert_eq!(
        m.get(KUBELET).await.bytes().await.expect("body").as_ref(),
        file.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cut_knob_drops_the_connection_after_n_bytes_once() {
    let m = mirror();
    let file = m.file(KUBELET);
    assert_eq!(
        m.control(
            reqwest::Method::POST,
            &format!("mirror/cut?path={KUBELET}&after=100000")
        )
        .await,
        200
    );
    let mut resp = m.get(KUBELET).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-length"),
        KUBELET_LEN.to_string(),
        "the client expects the whole file"
    );
    let mut received = Vec::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(c)) => received.extend_from_slice(&c),
            Ok(None) => panic!("the body completed; it should have been cut after 100000 bytes"),
            Err(e) => break e,
        }
    };
    assert!(
        err.is_body() || err.is_request() || err.is_decode(),
        "a transfer error: {err:?}"
    );
    assert_eq!(received.len(), 100_000);
    assert_eq!(
        received.as_slice(),
        &file[..100_000],
        "what arrived is intact"
    );

    // Resuming with a Range finishes the download; the cut applied once.
    let rest = m
        .http
        .get(m.url(KUBELET))
        .header("range", "bytes=100000-")
        .send()
        .await
        .expect("resume")
        .bytes()
        .await
        .expect("body");
    assert_eq!(rest.as_ref(), &file[100_000..]);
    assert_eq!(
        m.control(reqwest::Method::POST, "mirror/cut?path=x").await,
        400,
        "after=N is required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_symlink_escapes_are_refused() {
    let m = mirror();
    assert_eq!(
        m.raw_status("/mirror/1.31.2/amd64/kubelet"),
        200,
        "the raw client works"
    );
    assert_eq!(m.raw_status("/mirror/../secret.txt"), 400);
    assert_eq!(m.raw_status("/mirror/1.31.2/../../secret.txt"), 400);
    assert_eq!(m.raw_status("/mirror/%2e%2e/secret.txt"), 400);
    assert_eq!(m.raw_status("/mirror/%2E%2E%2Fsecret.txt"), 400);
    assert_eq!(m.raw_status("/mirror/./1.31.2/amd64/kubelet"), 400);
    assert_eq!(
        m.get("escape").await.status(),
        403,
        "a symlink may not lead outside the mirror"
    );
    assert_eq!(
        m.control(reqwest::Method::POST, "mirror/corrupt?path=../secret.txt")
            .await,
        400
    );
    let put = m
        .http
        .put(m.url(KUBELET))
        .body("x")
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mirror_directory_everything_is_404() {
    let ds = common::devstack();
    let resp = reqwest::get(format!("{}/mirror/manifest.yaml", ds.url))
        .await
        .expect("answers");
    assert_eq!(resp.status(), 404);
}
