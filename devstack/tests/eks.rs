//! EKS DescribeCluster / ListClusters of the devstack through the official aws-sdk-eks client,
//! the cluster control endpoint, and the CA certificate (a real one, persisted).

mod common;

use aws_sdk_eks::Client;
use aws_sdk_eks::types::ClusterStatus;
use base64::Engine;
use hybrid_devstack::{Config, Devstack};

async fn client(ds: &Devstack) -> Client {
    Client::new(&common::admin_config(&ds.url).await)
}

async fn control(
    ds: &Devstack,
    method: reqwest::Method,
    path_and_query: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, format!("{}/_devstack/{path_and_query}", ds.url))
        .send()
        .await
        .expect("control endpoint answers")
}

/// Decodes `certificateAuthority.data` into the DER of the certificate it holds.
fn ca_der(data: &str) -> Vec<u8> {
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("CA data is base64");
    let pem = String::from_utf8(pem).expect("PEM is text");
    let body: String = pem
        .lines()
        .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| *l != "-----END CERTIFICATE-----")
        .collect();
    assert!(!body.is_empty(), "a PEM certificate block: {pem}");
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_cluster_is_active_with_a_real_ca_and_remote_networks() {
    let ds = common::devstack();
    let eks = client(&ds).await;
    let out = eks
        .describe_cluster()
        .name("hybrid-demo")
        .send()
        .await
        .expect("DescribeCluster");
    let c = out.cluster().expect("cluster");
    assert_eq!(c.status(), Some(&ClusterStatus::Active));
    assert_eq!(c.version(), Some("1.31"));
    assert_eq!(
        c.arn(),
        Some("arn:aws:eks:us-west-2:123456789012:cluster/hybrid-demo")
    );
    assert!(
        c.endpoint()
            .is_some_and(|e| e.starts_with("https://127.0.0.1:")),
        "{:?}",
        c.endpoint()
    );
    assert!(c.created_at().is_some());
    let remote = c.remote_network_config().expect("remoteNetworkConfig");
    let nodes: Vec<&str> = remote
        .remote_node_networks()
        .iter()
        .flat_map(|n| n.cidrs())
        .map(String::as_str)
        .collect();
    let pods: Vec<&str> = remote
        .remote_pod_networks()
        .iter()
        .flat_map(|n| n.cidrs())
        .map(String::as_str)
        .collect();
    assert_eq!(
        (nodes.as_slice(), pods.as_slice()),
        (&["10.80.0.0/16"][..], &["10.85.0.0/16"][..])
    );
    assert_eq!(
        c.kubernetes_network_config()
            .and_then(|k| k.service_ipv4_cidr()),
        Some("172.20.0.0/16")
    );

    let der = ca_der(
        c.certificate_authority()
            .and_then(|a| a.data())
            .expect("certificateAuthority.data"),
    );
    let (rest, cert) =
        x509_parser::parse_x509_certificate(&der).expect("the CA is a valid X.509 certificate");
    assert!(rest.is_empty());
    assert!(cert.is_ca(), "basicConstraints CA:TRUE");
    let cn: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    assert_eq!(cn, ["kubernetes"]);
    assert!(cert.validity().is_valid(), "valid now");
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_clusters_are_resource_not_found() {
    let ds = common::devstack();
    let eks = client(&ds).await;
    let err = eks
        .describe_cluster()
        .name("no-such-cluster")
        .send()
        .await
        .expect_err("unknown cluster");
    let svc = err.into_service_error();
    assert!(svc.is_resource_not_found_exception(), "{svc:?}");
    assert_eq!(
        aws_sdk_eks::error::ProvideErrorMetadata::message(&svc),
        Some("No cluster found for name: no-such-cluster.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_created_through_the_control_endpoint_are_described_and_listed() {
    let ds = common::devstack();
    let eks = client(&ds).await;
    let resp = control(
        &ds,
        reqwest::Method::POST,
        "eks/clusters?name=edge&status=CREATING&version=1.30&endpoint=https://127.0.0.1:16443&remote_node_cidrs=192.168.0.0/16,10.1.0.0/24",
    )
    .await;
    assert_eq!(resp.status(), 200);

    // While CREATING, EKS has neither endpoint nor CA to report.
    let creating = eks
        .describe_cluster()
        .name("edge")
        .send()
        .await
        .expect("DescribeCluster");
    let c = creating.cluster().expect("cluster");
    assert_eq!(c.status(), Some(&ClusterStatus::Creating));
    assert_eq!(c.version(), Some("1.30"));
    assert!(c.endpoint().is_none() && c.certificate_authority().is_none());
    let nodes = common::remote_node_cidrs(c);
    assert_eq!(nodes, ["192.168.0.0/16", "10.1.0.0/24"]);

    assert_eq!(
        control(
            &ds,
            reqwest::Method::POST,
            "eks/clusters?name=edge&status=ACTIVE"
        )
        .await
        .status(),
        200
    );
    let active = eks
        .describe_cluster()
        .name("edge")
        .send()
        .await
        .expect("DescribeCluster");
    let c = active.cluster().expect("cluster");
    assert_eq!(c.status(), Some(&ClusterStatus::Active));
    assert_eq!(
        c.endpoint(),
        Some("https://127.0.0.1:16443"),
        "fields not given on update are kept"
    );
    let ca = c
        .certificate_authority()
        .and_then(|a| a.data())
        .expect("CA once ACTIVE")
        .to_string();

    // The control endpoint hands out the same CA plus its key (for a stand-in API server).
    let keys: serde_json::Value = control(&ds, reqwest::Method::GET, "eks/ca?name=edge")
        .await
        .json()
        .await
        .expect("JSON");
    let cert_pem = keys["cert_pem"].as_str().expect("cert_pem");
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(cert_pem),
        ca
    );
    assert!(
        keys["key_pem"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );

    let demo_ca = eks
        .describe_cluster()
        .name("hybrid-demo")
        .send()
        .await
        .expect("demo");
    assert_ne!(
        demo_ca
            .cluster()
            .and_then(|c| c.certificate_authority())
            .and_then(|a| a.data()),
        Some(ca.as_str()),
        "one CA per cluster"
    );

    let all = eks.list_clusters().send().await.expect("ListClusters");
    assert_eq!(all.clusters(), ["edge", "hybrid-demo"]);
    let first = eks
        .list_clusters()
        .max_results(1)
        .send()
        .await
        .expect("page 1");
    assert_eq!(first.clusters(), ["edge"]);
    let second = eks
        .list_clusters()
        .max_results(1)
        .next_token(first.next_token().expect("more"))
        .send()
        .await
        .expect("page 2");
    assert_eq!(second.clusters(), ["hybrid-demo"]);
    assert!(second.next_token().is_none());

    assert_eq!(
        control(&ds, reqwest::Method::DELETE, "eks/clusters?name=edge")
            .await
            .status(),
        200
    );
    let gone = eks
        .describe_cluster()
        .name("edge")
        .send()
        .await
        .expect_err("deleted");
    assert!(gone.into_service_error().is_resource_not_found_exception());
    assert_eq!(
        control(
            &ds,
            reqwest::Method::POST,
            "eks/clusters?name=x&status=BROKEN"
        )
        .await
        .status(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_cas_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let ca_of = |out: aws_sdk_eks::operation::describe_cluster::DescribeClusterOutput| {
        out.cluster()
            .and_then(|c| c.certificate_authority())
            .and_then(|a| a.data())
            .expect("CA")
            .to_string()
    };
    let (demo, extra) = {
        let ds = Devstack::spawn(config()).expect("start devstack");
        assert_eq!(
            control(&ds, reqwest::Method::POST, "eks/clusters?name=extra")
                .await
                .status(),
            200
        );
        let eks = client(&ds).await;
        (
            ca_of(
                eks.describe_cluster()
                    .name("hybrid-demo")
                    .send()
                    .await
                    .expect("demo"),
            ),
            ca_of(
                eks.describe_cluster()
                    .name("extra")
                    .send()
                    .await
                    .expect("extra"),
            ),
        )
    };
    let ds = Devstack::spawn(config()).expect("restart devstack");
    let eks = client(&ds).await;
    assert_eq!(
        ca_of(
            eks.describe_cluster()
                .name("hybrid-demo")
                .send()
                .await
                .expect("demo")
        ),
        demo,
        "the CA is created once"
    );
    assert_eq!(
        ca_of(
            eks.describe_cluster()
                .name("extra")
                .send()
                .await
                .expect("extra")
        ),
        extra
    );
}
