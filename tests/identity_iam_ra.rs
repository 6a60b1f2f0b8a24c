//! The devstack's IAM Roles Anywhere `CreateSession` is strict where AWS is: requests signed by
//! the agent's X.509 signer are accepted for RSA and ECDSA keys, with and without an
//! intermediate CA, and every tampered or untrusted variant is refused with AccessDenied.

mod identity_support;

use std::time::{Duration, SystemTime};

use hybrid_agent::identity::iam_ra::{
    CertificateChain, IamRaSettings, SignedSession, SigningKey, sign_create_session,
};
use identity_support::*;

const BODY: &[u8] = br#"{"durationSeconds":3600,"roleSessionName":"edge-node-1"}"#;

struct Material {
    _dir: tempfile::TempDir,
    settings: IamRaSettings,
    chain: CertificateChain,
    key: SigningKey,
}

/// Certificate (optionally only its leaf) and key from the devstack CA, as files the agent reads.
fn material(ds: &hybrid_devstack::Devstack, issued: &Issued, leaf_only: bool) -> Material {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_pem = if leaf_only {
        let end = "-----END CERTIFICATE-----\n";
        let i = issued.certificate_pem.find(end).expect("a certificate") + end.len();
        issued.certificate_pem[..i].to_string()
    } else {
        issued.certificate_pem.clone()
    };
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, cert_pem).expect("cert");
    std::fs::write(&key, &issued.private_key_pem).expect("key");
    let settings = IamRaSettings {
        endpoint: reqwest::Url::parse(&ds.url).expect("url"),
        region: REGION.into(),
        trust_anchor_arn: issued.trust_anchor_arn.clone(),
        profile_arn: issued.profile_arn.clone(),
        role_arn: issued.role_arn.clone(),
        certificate_path: cert.clone(),
        private_key_path: key.clone(),
        session_name: Some("edge-node-1".into()),
        duration: Duration::from_secs(3600),
    };
    Material {
        chain: CertificateChain::load(&cert).expect("chain"),
        key: SigningKey::load(&key).expect("key"),
        settings,
        _dir: dir,
    }
}

fn sign(m: &Material, at: SystemTime) -> SignedSession {
    sign_create_session(&m.settings, &m.chain, &m.key, at, BODY).expect("sign")
}

/// Sends a signed request (optionally with another body); returns status, error type, body.
fn send(s: &SignedSession, body: &[u8]) -> (u16, String, String) {
    runtime().block_on(async {
        let mut req = reqwest::Client::new().post(s.url.clone());
        for (n, v) in &s.headers {
            req = req.header(*n, v);
        }
        let resp = req.body(body.to_vec()).send().await.expect("send");
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, kind, resp.text().await.expect("body"))
    })
}

fn assert_denied(r: (u16, String, String), why: &str) {
    assert_eq!(
        (r.0, r.1.as_str()),
        (403, "AccessDeniedException"),
        "{why}: {}",
        r.2
    );
}

#[test]
fn valid_requests_for_every_key_type_and_chain() {
    let ds = devstack(Duration::from_secs(3600));
    for (rsa, intermediate) in [(true, false), (false, false), (true, true), (false, true)] {
        let m = material(&ds, &issue_certificate(&ds, rsa, intermediate, None), false);
        let (status, kind, body) = send(&sign(&m, SystemTime::now()), BODY);
        assert_eq!(
            status, 201,
            "rsa={rsa} intermediate={intermediate}: {kind} {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let c = &v["credentialSet"][0]["credentials"];
        assert!(
            c["accessKeyId"]
                .as_str()
                .expect("key id")
                .starts_with("ASIA"),
            "{v}"
        );
        assert!(
            c["expiration"].as_str().expect("expiration").ends_with('Z'),
            "{v}"
        );
    }
}

#[test]
fn tampered_or_untrusted_requests_are_denied() {
    let ds = devstack(Duration::from_secs(3600));
    let issued = issue_certificate(&ds, false, true, None);
    let m = material(&ds, &issued, false);

    // Body changed after signing.
    assert_denied(
        send(
            &sign(&m, SystemTime::now()),
            br#"{"durationSeconds":43200}"#,
        ),
        "tampered body",
    );

    // A signed header changed after signing.
    let mut s = sign(&m, SystemTime::now());
    for (n, v) in &mut s.headers {
        if *n == "x-amz-date" {
            let t = SystemTime::now() + Duration::from_secs(60);
            *v = time::OffsetDateTime::from(t)
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .expect("format");
        }
    }
    assert_denied(send(&s, BODY), "tampered date header");

    // Signed ten minutes ago: outside the 5-minute window.
    let r = send(
        &sign(&m, SystemTime::now() - Duration::from_secs(600)),
        BODY,
    );
    assert!(r.2.contains("Signature expired"), "{}", r.2);
    assert_denied(r, "stale request");

    // The leaf alone, without the intermediate that issued it: no chain to the anchor.
    let leaf_only = material(&ds, &issued, true);
    let r = send(&sign(&leaf_only, SystemTime::now()), BODY);
    assert!(
        r.2.contains("not issued by") || r.2.contains("chain"),
        "{}",
        r.2
    );
    assert_denied(r, "missing intermediate");

    // Signed with a key that is not the certificate's.
    let other = issue_certificate(&ds, false, false, None);
    let mut wrong_key = material(&ds, &issued, false);
    wrong_key.key = material(&ds, &other, false).key;
    assert_denied(
        send(&sign(&wrong_key, SystemTime::now()), BODY),
        "wrong key",
    );

    // An expired certificate.
    let expired = material(&ds, &issue_certificate(&ds, true, false, Some(-60)), false);
    let r = send(&sign(&expired, SystemTime::now()), BODY);
    assert!(r.2.contains("not valid at this time"), "{}", r.2);
    assert_denied(r, "expired certificate");

    // A trust anchor the devstack does not have.
    let mut unknown = material(&ds, &issued, false);
    unknown.settings.trust_anchor_arn = format!("{}-other", unknown.settings.trust_anchor_arn);
    assert_denied(
        send(&sign(&unknown, SystemTime::now()), BODY),
        "unknown trust anchor",
    );

    // A self-signed impostor certificate.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hybrid-devstack test CA");
    let cert = params.self_signed(&key).expect("self-signed");
    let impostor = Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        ..issued.clone()
    };
    let r = send(
        &sign(&material(&ds, &impostor, false), SystemTime::now()),
        BODY,
    );
    assert!(r.2.contains("untrusted certificate"), "{}", r.2);
    assert_denied(r, "impostor with the CA's name");
}
