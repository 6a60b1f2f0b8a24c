//! `hybrid-devstack --tls`: the same routes over HTTPS, verified by a client trusting the CA the
//! devstack wrote, by IP and by name, and refused by one that does not trust it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_to_clients_trusting_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca_file) = hybrid_devstack::tls::listener_tls(dir.path()).unwrap();
    assert_eq!(ca_file, dir.path().join("tls/ca.pem"));
    let (listener, state) = hybrid_devstack::server::bind(hybrid_devstack::Config::default())
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hybrid_devstack::server::serve_tls(
        listener,
        state,
        acceptor,
        async {
            let _ = stopped.await;
        },
    ));

    let ca = std::fs::read(&ca_file).unwrap();
    let trusting = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .build()
        .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let r = trusting
            .get(format!("https://{host}:{port}/_devstack/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
        // The client offers h2 too; the devstack serves HTTP/1.1 and says so by ALPN.
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
    }
    let untrusting = reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{port}/_devstack/health"))
            .send()
            .await
            .is_err()
    );
    // A failed handshake does not stop the listener.
    let r = trusting
        .get(format!("https://127.0.0.1:{port}/_devstack/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    drop((trusting, untrusting));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
