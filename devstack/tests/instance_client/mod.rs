//! A test-side client for the SSM private API, written independently of the devstack's verifier
//! from docs/protocols.md "SSM hybrid activation": registration (unsigned) and the
//! RSA-PSS-signed instance calls.
//! Its knobs let a test tamper with exactly one part of a request after signing it.
#![allow(dead_code)]

use std::time::SystemTime;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PSS_SHA256};
use base64::Engine;
use serde_json::{Value, json};

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
pub const REGION: &str = "us-west-2";

pub fn new_key() -> KeyPair {
    KeyPair::generate(KeySize::Rsa2048).expect("generate RSA-2048")
}

/// Standard base64 of the DER SubjectPublicKeyInfo.
pub fn spki_b64(key: &KeyPair) -> String {
    let der: PublicKeyX509Der<'static> = key.public_key().as_der().expect("SPKI DER");
    base64::engine::general_purpose::STANDARD.encode(der.as_ref())
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b))
}

fn amz_date(t: SystemTime) -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from(t)
        .format(f)
        .expect("format date")
}

/// What gets signed, when it differs from what is sent.
#[derive(Default, Clone)]
pub struct Tamper {
    /// Sign this body, send the real one.
    pub signed_body: Option<Vec<u8>>,
    /// Sign this Host value, send the real one.
    pub signed_host: Option<String>,
    /// Sign this X-Amz-Target, send the real one.
    pub signed_target: Option<String>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    /// The error code, without a `namespace#` prefix.
    pub fn code(&self) -> &str {
        let t = self
            .body
            .get("__type")
            .and_then(Value::as_str)
            .unwrap_or("");
        t.rsplit('#').next().unwrap_or(t)
    }
    pub fn message(&self) -> &str {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn str(&self, field: &str) -> &str {
        self.body
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{field} in {}", self.body))
    }
    #[track_caller]
    pub fn expect_ok(self) -> Self {
        assert_eq!(self.status, 200, "expected success, got {}", self.body);
        self
    }
    #[track_caller]
    pub fn expect_err(&self, code: &str) {
        assert_eq!(
            (self.status, self.code()),
            (400, code),
            "body: {}",
            self.body
        );
    }
}

pub struct Client {
    url: String,
    /// `127.0.0.1:PORT`, the Host header reqwest sends.
    host: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(ds: &hybrid_devstack::Devstack) -> Client {
        Client {
            url: ds.url.clone(),
            host: ds.addr.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, op: &str, body: Vec<u8>, extra: Vec<(&'static str, String)>) -> Resp {
        let mut rb = self
            .http
            .post(format!("{}/", self.url))
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", format!("AmazonSSM.{op}"))
            .body(body);
        for (k, v) in extra {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.expect("HTTP call to the devstack");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&bytes).expect("JSON response")
        };
        Resp { status, body }
    }

    pub async fn unsigned(&self, op: &str, body: &Value) -> Resp {
        self.send(op, body.to_string().into_bytes(), Vec::new())
            .await
    }

    pub async fn register(
        &self,
        activation_id: &str,
        code: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Resp {
        self.unsigned(
            "RegisterManagedInstance",
            &json!({
                "ActivationCode": code,
                "ActivationId": activation_id,
                "PublicKey": public_key,
                "PublicKeyType": "Rsa",
                "Fingerprint": fingerprint,
            }),
        )
        .await
    }

    /// An instance call signed with `key` at `at` (docs/protocols.md "Signing instance calls"),
    /// tampered as `t` says.
    pub async fn signed_with(
        &self,
        op: &str,
        body: &Value,
        instance: &str,
        key: &KeyPair,
        at: SystemTime,
        t: &Tamper,
    ) -> Resp {
        let body = body.to_string().into_bytes();
        let date = amz_date(at);
        let day = &date[..8];
        let target = format!("AmazonSSM.{op}");
        let canonical = format!(
            "POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{}\nx-amz-date:{date}\nx-amz-target:{}\n\ncontent-type;host;x-amz-date;x-amz-target\n{}",
            t.signed_host.as_deref().unwrap_or(&self.host),
            t.signed_target.as_deref().unwrap_or(&target),
            sha256_hex(t.signed_body.as_deref().unwrap_or(&body)),
        );
        let scope = format!("{day}/{REGION}/ssm/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(&RSA_PSS_SHA256, &rng, to_sign.as_bytes(), &mut sig)
            .expect("RSA-PSS sign");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={}",
            instance,
            base64::engine::general_purpose::STANDARD.encode(&sig)
        );
        self.send(
            op,
            body,
            vec![("x-amz-date", date), ("authorization", auth)],
        )
        .await
    }

    pub async fn signed(&self, op: &str, body: &Value, instance: &str, key: &KeyPair) -> Resp {
        self.signed_with(
            op,
            body,
            instance,
            key,
            SystemTime::now(),
            &Tamper::default(),
        )
        .await
    }

    pub async fn token(&self, instance: &str, key: &KeyPair, fingerprint: &str) -> Resp {
        self.signed(
            "RequestManagedInstanceRoleToken",
            &json!({ "Fingerprint": fingerprint }),
            instance,
            key,
        )
        .await
    }

    /// POST to the control endpoint, e.g. `clock?offset_secs=60`.
    pub async fn control(&self, path_and_query: &str) {
        let resp = self
            .http
            .post(format!("{}/_devstack/{path_and_query}", self.url))
            .send()
            .await
            .expect("control call");
        assert!(
            resp.status().is_success(),
            "control {path_and_query}: {}",
            resp.status()
        );
    }
}

/// A registered instance.
pub struct Registered {
    pub id: String,
    pub key: KeyPair,
    pub fingerprint: String,
}

impl Registered {
    pub async fn token(&self, c: &Client) -> Resp {
        c.token(&self.id, &self.key, &self.fingerprint).await
    }
}

/// Creates an activation through aws-sdk-ssm with the admin keys.
pub async fn create_activation(
    ssm: &aws_sdk_ssm::Client,
    role: &str,
    limit: i32,
) -> (String, String) {
    let out = ssm
        .create_activation()
        .iam_role(role)
        .registration_limit(limit)
        .send()
        .await
        .expect("CreateActivation");
    (
        out.activation_id().expect("id").to_string(),
        out.activation_code().expect("code").to_string(),
    )
}

/// Creates an activation and registers one instance with a fresh key.
pub async fn register_new(c: &Client, ssm: &aws_sdk_ssm::Client, role: &str) -> Registered {
    let (id, code) = create_activation(ssm, role, 1).await;
    let key = new_key();
    let fingerprint = uuid::Uuid::new_v4().to_string();
    let resp = c
        .register(&id, &code, &spki_b64(&key), &fingerprint)
        .await
        .expect_ok();
    Registered {
        id: resp.str("InstanceId").to_string(),
        key,
        fingerprint,
    }
}
