//! STS GetCallerIdentity against the devstack with aws-sdk-sts: the admin key pair, credentials
//! issued by RequestManagedInstanceRoleToken, and every way SigV4 verification must fail.

mod common;
mod instance_client;

use std::sync::{Arc, Mutex};

use aws_sdk_sts::config::interceptors::AfterDeserializationInterceptorContextRef;
use aws_sdk_sts::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sts::error::{BoxError, ProvideErrorMetadata};
use instance_client::{Client, register_new};

const ROLE: &str = "service-role/AmazonEKSHybridNodesRole";

async fn sts_with(url: &str, ak: &str, secret: &str, token: Option<&str>) -> aws_sdk_sts::Client {
    aws_sdk_sts::Client::new(&common::sdk_config(url, ak, secret, token.map(str::to_string)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_identity() {
    let ds = common::devstack();
    let sts = aws_sdk_sts::Client::new(&common::admin_config(&ds.url).await);
    let who = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(who.account(), Some("123456789012"));
    assert_eq!(
        who.arn(),
        Some("arn:aws:iam::123456789012:user/devstack-admin")
    );
    assert_eq!(who.user_id(), Some("AIDADEVSTACKADMIN0000"));
}

/// Keeps the raw body of the response the SDK received (buffered by then: GetCallerIdentity is
/// not a streaming operation).
#[derive(Debug, Clone, Default)]
struct CaptureBody(Arc<Mutex<Option<Vec<u8>>>>);

impl Intercept for CaptureBody {
    fn name(&self) -> &'static str {
        "CaptureBody"
    }
    fn read_after_deserialization(
        &self,
        ctx: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        *self.0.lock().expect("capture lock") = ctx.response().body().bytes().map(<[u8]>::to_vec);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_is_the_aws_xml_shape() {
    let ds = common::devstack();
    let sts = aws_sdk_sts::Client::new(&common::admin_config(&ds.url).await);
    let capture = CaptureBody::default();
    sts.get_caller_identity()
        .customize()
        .interceptor(capture.clone())
        .send()
        .await
        .expect("GetCallerIdentity");
    let body = String::from_utf8(
        capture
            .0
            .lock()
            .expect("capture lock")
            .take()
            .expect("body captured"),
    )
    .expect("UTF-8");
    let (head, rest) = body.split_once("<RequestId>").expect("RequestId element");
    let (request_id, tail) = rest.split_once("</RequestId>").expect("RequestId end");
    uuid::Uuid::parse_str(request_id).expect("RequestId is a UUID");
    assert_eq!(
        head,
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult>\
         <Arn>arn:aws:iam::123456789012:user/devstack-admin</Arn><UserId>AIDADEVSTACKADMIN0000</UserId>\
         <Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata>"
    );
    assert_eq!(tail, "</ResponseMetadata></GetCallerIdentityResponse>");

    // An unsigned call gets the awsQuery error document.
    let resp = reqwest::Client::new()
        .post(format!("{}/", ds.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=GetCallerIdentity&Version=2011-06-15")
        .send()
        .await
        .expect("HTTP");
    assert_eq!(resp.status().as_u16(), 403);
    let body = resp.text().await.expect("body");
    assert!(
        body.contains("<Code>MissingAuthenticationToken</Code>"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_credentials_identify_the_assumed_role_until_they_expire() {
    let ds = common::devstack();
    let c = Client::new(&ds);
    let ssm = aws_sdk_ssm::Client::new(&common::admin_config(&ds.url).await);
    let node = register_new(&c, &ssm, ROLE).await;
    let tok = node.token(&c).await.expect_ok();
    let (ak, secret, token) = (
        tok.str("AccessKeyId"),
        tok.str("SecretAccessKey"),
        tok.str("SessionToken"),
    );

    let who = sts_with(&ds.url, ak, secret, Some(token))
        .await
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(
        who.arn(),
        Some(
            format!(
                "arn:aws:sts::123456789012:assumed-role/AmazonEKSHybridNodesRole/{}",
                node.id
            )
            .as_str()
        )
    );
    assert_eq!(who.account(), Some("123456789012"));
    let user_id = who.user_id().expect("UserId");
    assert!(
        user_id.starts_with("AROA") && user_id.ends_with(&format!(":{}", node.id)),
        "{user_id}"
    );

    // One character of the secret changed.
    let mut bad = secret.to_string();
    let last = if bad.ends_with('A') { "B" } else { "A" };
    bad.replace_range(bad.len() - 1.., last);
    let e = sts_with(&ds.url, ak, &bad, Some(token))
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("tampered secret");
    assert_eq!(e.into_service_error().code(), Some("SignatureDoesNotMatch"));

    // The key without its session token, or with another one.
    let e = sts_with(&ds.url, ak, secret, None)
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("no token");
    assert_eq!(e.into_service_error().code(), Some("InvalidClientTokenId"));
    let e = sts_with(&ds.url, ak, secret, Some("not-the-token"))
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("other token");
    assert_eq!(e.into_service_error().code(), Some("InvalidClientTokenId"));

    // A key the devstack never issued.
    let e = sts_with(&ds.url, "ASIANEVERISSUED00000", secret, Some(token))
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("unknown");
    assert_eq!(e.into_service_error().code(), Some("InvalidClientTokenId"));

    // Past the one-hour lifetime on the devstack's clock.
    c.control("clock?offset_secs=3700").await;
    let e = sts_with(&ds.url, ak, secret, Some(token))
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("expired");
    assert_eq!(e.into_service_error().code(), Some("ExpiredToken"));

    // A fresh token from the same node works again (signed at the devstack's time).
    let late = c
        .signed_with(
            "RequestManagedInstanceRoleToken",
            &serde_json::json!({ "Fingerprint": node.fingerprint }),
            &node.id,
            &node.key,
            std::time::SystemTime::now() + std::time::Duration::from_secs(3700),
            &Default::default(),
        )
        .await
        .expect_ok();
    assert_ne!(late.str("AccessKeyId"), ak);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_signature_failures() {
    let ds = common::devstack();
    let e = sts_with(&ds.url, common::ADMIN_ACCESS_KEY_ID, "wrong", None)
        .await
        .get_caller_identity()
        .send()
        .await
        .expect_err("bad secret");
    let e = e.into_service_error();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    assert!(
        e.message().is_some_and(|m| m.contains("String-to-Sign")),
        "{e:?}"
    );

    let c = Client::new(&ds);
    c.control("clock?offset_secs=-600").await;
    let e = aws_sdk_sts::Client::new(&common::admin_config(&ds.url).await)
        .get_caller_identity()
        .send()
        .await
        .expect_err("skew");
    let e = e.into_service_error();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    assert!(
        e.message()
            .is_some_and(|m| m.contains("Signature not yet current")),
        "{e:?}"
    );
}
