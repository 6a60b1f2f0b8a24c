//! The stand-in API server: TLS with a certificate from the cluster CA, EKS tokens presigned by
//! aws-sigv4 (the signer inside aws-sdk-rust, an implementation independent of the agent's),
//! Node objects, and the access-entry switch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine;
use hybrid_devstack::kube::verify_token;

const CLUSTER: &str = "hybrid-demo";

/// A `k8s-aws-v1.` token of the devstack admin for `cluster`, signed at `at`.
fn presigned_token(cluster: &str, at: SystemTime) -> String {
    common::presigned_token(&common::admin_credentials(), cluster, at)
}

#[test]
fn tokens_presigned_by_aws_sigv4_are_accepted_for_their_cluster_only_and_expire() {
    let ds = common::devstack();
    let now = SystemTime::now();
    let who = verify_token(&ds.state, CLUSTER, &presigned_token(CLUSTER, now)).unwrap();
    assert!(who.arn.ends_with(":user/devstack-admin"), "{}", who.arn);
    let other = verify_token(&ds.state, "another", &presigned_token(CLUSTER, now));
    assert!(other.unwrap_err().contains("does not match"));
    let old = verify_token(
        &ds.state,
        CLUSTER,
        &presigned_token(CLUSTER, now - Duration::from_secs(16 * 60)),
    );
    assert!(old.unwrap_err().contains("expired"));
    // One character of the signature changed.
    let token = presigned_token(CLUSTER, now);
    let url = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_start_matches("k8s-aws-v1."))
            .unwrap(),
    )
    .unwrap();
    let last = url.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &url[..url.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let tampered = format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(flipped)
    );
    assert!(verify_token(&ds.state, CLUSTER, &tampered).is_err());
    assert!(verify_token(&ds.state, CLUSTER, "k8s-aws-v1.bm90IGEgdXJs").is_err());
}

#[test]
fn the_api_server_speaks_tls_from_the_cluster_ca_and_keeps_nodes() {
    let ds = common::devstack();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = reqwest::Client::new();
        let control = |path: String| {
            let plain = plain.clone();
            let url = format!("{}/_devstack/eks/{path}", ds.url);
            async move {
                let r = plain.post(url).send().await.unwrap();
                assert!(r.status().is_success(), "{r:?}");
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        let started = control(format!("kube-api?name={CLUSTER}")).await;
        let endpoint = started["endpoint"].as_str().unwrap().to_owned();
        assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
        // Started once: asking again gives the same server, and DescribeCluster names it.
        assert_eq!(control(format!("kube-api?name={CLUSTER}")).await, started);
        assert_eq!(
            ds.state.eks.cluster(CLUSTER).unwrap().endpoint,
            endpoint,
            "DescribeCluster reports the stand-in API server"
        );

        let ca = ds.state.eks.cluster(CLUSTER).unwrap().ca_cert_pem;
        let trusting = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap())
            .build()
            .unwrap();
        // A client trusting only the system roots refuses the certificate.
        let system_roots = reqwest::Client::builder()
            .tls_certs_only(Vec::new())
            .build()
            .unwrap();
        assert!(
            system_roots
                .get(format!("{endpoint}/healthz"))
                .send()
                .await
                .is_err()
        );

        let healthz = trusting
            .get(format!("{endpoint}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(healthz.status(), 200, "health is anonymous");
        let anonymous = trusting
            .get(format!("{endpoint}/api/v1/nodes"))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        let body: serde_json::Value = anonymous.json().await.unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "Unauthorized");

        let token = presigned_token(CLUSTER, SystemTime::now());
        let node = serde_json::json!({"metadata": {"name": "mi-0123456789abcdef0"}, "status": {}});
        // Created once; the same name again is a conflict.
        for expected in [201, 409] {
            let created = trusting
                .post(format!("{endpoint}/api/v1/nodes"))
                .bearer_auth(&token)
                .json(&node)
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), expected);
        }
        let patched = trusting
            .patch(format!(
                "{endpoint}/api/v1/nodes/mi-0123456789abcdef0/status"
            ))
            .bearer_auth(&token)
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        let got: serde_json::Value = trusting
            .get(format!("{endpoint}/api/v1/nodes/mi-0123456789abcdef0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["status"]["conditions"][0]["status"], "True");
        assert_eq!(got["metadata"]["name"], "mi-0123456789abcdef0");
        let missing = trusting
            .get(format!("{endpoint}/api/v1/nodes/mi-ffffffffffffffff0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    });
}
