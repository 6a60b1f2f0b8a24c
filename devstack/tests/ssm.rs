//! SSM against the devstack: the public API through the official aws-sdk-ssm (SigV4 verified),
//! the private hybrid API through an independent test-side client (RSA-PSS signed, see
//! instance_client), and persistence across a restart.

mod common;
mod instance_client;

use std::time::{Duration, SystemTime};

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::primitives::DateTime;
use aws_sdk_ssm::types::{
    DescribeActivationsFilter, DescribeActivationsFilterKeys, InstanceInformationStringFilter,
    ResourceTypeForTagging, Tag,
};
use base64::Engine;
use instance_client::{
    Client, Registered, Tamper, create_activation, new_key, register_new, spki_b64,
};
use serde_json::json;

const ROLE: &str = "AmazonEKSHybridNodesRole";

async fn ssm_admin(ds: &hybrid_devstack::Devstack) -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&common::admin_config(&ds.url).await)
}

fn secs(t: &DateTime) -> i64 {
    t.secs()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_lifecycle_through_the_sdk() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);

    let before = now_secs();
    let created = ssm
        .create_activation()
        .iam_role(ROLE)
        .default_instance_name("edge-rack-1")
        .send()
        .await
        .expect("CreateActivation");
    let id = created.activation_id().expect("ActivationId").to_string();
    let code = created
        .activation_code()
        .expect("ActivationCode")
        .to_string();
    uuid::Uuid::parse_str(&id).expect("ActivationId is a UUID");
    assert_eq!(code.len(), 20, "activation code: {code}");

    let listed = ssm
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::ActivationIds)
                .filter_values(&id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeActivations");
    let [a] = listed.activation_list() else {
        panic!("one activation: {listed:?}")
    };
    assert_eq!(a.activation_id(), Some(id.as_str()));
    assert_eq!(a.iam_role(), Some(ROLE));
    assert_eq!(a.default_instance_name(), Some("edge-rack-1"));
    assert_eq!(a.registration_limit(), Some(1), "default limit is 1");
    assert_eq!(a.registrations_count(), Some(0));
    assert!(!a.expired());
    let expires = secs(a.expiration_date().expect("ExpirationDate"));
    assert!(
        (before + 86_400..=now_secs() + 86_400).contains(&expires),
        "default expiry is 24 h: {expires}"
    );

    // Filtering on another role finds nothing.
    let none = ssm
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::IamRole)
                .filter_values("OtherRole")
                .build(),
        )
        .send()
        .await
        .expect("DescribeActivations by role");
    assert!(none.activation_list().is_empty());

    // A registration is counted.
    let key = new_key();
    c.register(&id, &code, &spki_b64(&key), "fp-1")
        .await
        .expect_ok();
    let listed = ssm
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::ActivationIds)
                .filter_values(&id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeActivations");
    assert_eq!(listed.activation_list()[0].registrations_count(), Some(1));

    // Longer than 30 days is refused.
    let too_long = ssm
        .create_activation()
        .iam_role(ROLE)
        .expiration_date(DateTime::from(
            SystemTime::now() + Duration::from_secs(31 * 86_400),
        ))
        .send()
        .await
        .expect_err("31-day activation");
    assert_eq!(
        too_long.into_service_error().code(),
        Some("InvalidParameters")
    );

    ssm.delete_activation()
        .activation_id(&id)
        .send()
        .await
        .expect("DeleteActivation");
    let gone = ssm
        .delete_activation()
        .activation_id(&id)
        .send()
        .await
        .expect_err("second delete");
    assert!(gone.into_service_error().is_invalid_activation());
    let listed = ssm
        .describe_activations()
        .send()
        .await
        .expect("DescribeActivations");
    assert!(
        listed
            .activation_list()
            .iter()
            .all(|a| a.activation_id() != Some(id.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_information_tags_and_deregistration() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let node = register_new(&c, &ssm, ROLE).await;
    assert!(
        node.id.starts_with("mi-")
            && node.id.len() == 20
            && node.id[3..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        node.id
    );

    let describe = || async {
        ssm.describe_instance_information()
            .filters(
                InstanceInformationStringFilter::builder()
                    .key("InstanceIds")
                    .values(&node.id)
                    .build()
                    .expect("filter"),
            )
            .send()
            .await
            .expect("DescribeInstanceInformation")
    };
    let info = describe().await;
    let [i] = info.instance_information_list() else {
        panic!("one instance: {info:?}")
    };
    assert_eq!(i.instance_id(), Some(node.id.as_str()));
    // Registered, but its agent never pinged: not reachable, no ping time.
    assert_eq!(i.ping_status().map(|p| p.as_str()), Some("ConnectionLost"));
    assert_eq!(i.last_ping_date_time(), None);
    assert_eq!(
        i.resource_type().map(|r| r.as_str()),
        Some("ManagedInstance")
    );
    assert_eq!(i.iam_role(), Some(ROLE));
    assert!(
        i.activation_id()
            .is_some_and(|a| uuid::Uuid::parse_str(a).is_ok())
    );
    let registered = secs(i.registration_date().expect("RegistrationDate"));

    // A token request (a minute later, devstack clock) is not a ping.
    c.control("clock?offset_secs=60").await;
    let tok = node.token(&c).await.expect_ok();
    assert!(tok.str("AccessKeyId").starts_with("ASIA"));
    let info = describe().await;
    let i = &info.instance_information_list()[0];
    assert_eq!(
        secs(i.registration_date().expect("RegistrationDate")),
        registered
    );
    assert_eq!(i.ping_status().map(|p| p.as_str()), Some("ConnectionLost"));
    c.control("clock?offset_secs=0").await;

    ssm.add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(&node.id)
        .tags(
            Tag::builder()
                .key("eks-cluster")
                .value("hybrid-demo")
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("AddTagsToResource");
    let tags = ssm
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(&node.id)
        .send()
        .await
        .expect("ListTagsForResource");
    let kv: Vec<(&str, &str)> = tags
        .tag_list()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(kv, [("eks-cluster", "hybrid-demo")]);
    let by_tag = ssm
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("tag:eks-cluster")
                .values("hybrid-demo")
                .build()
                .expect("filter"),
        )
        .send()
        .await
        .expect("DescribeInstanceInformation by tag");
    assert_eq!(by_tag.instance_information_list().len(), 1);

    ssm.deregister_managed_instance()
        .instance_id(&node.id)
        .send()
        .await
        .expect("DeregisterManagedInstance");
    assert!(describe().await.instance_information_list().is_empty());
    node.token(&c).await.expect_err("InvalidInstanceId");
    let again = ssm
        .deregister_managed_instance()
        .instance_id(&node.id)
        .send()
        .await
        .expect_err("second deregister");
    assert!(again.into_service_error().is_invalid_instance_id());
}

/// The role credentials a token request hands out, as SDK credentials.
fn role_credentials(tok: &instance_client::Resp) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        tok.str("AccessKeyId"),
        tok.str("SecretAccessKey"),
        Some(tok.str("SessionToken").to_string()),
        None,
        "token",
    )
}

/// UpdateInstanceInformation for `instance`, signed with `creds` by aws-sigv4.
async fn ping(
    ds: &hybrid_devstack::Devstack,
    creds: &aws_credential_types::Credentials,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = common::signed_json(
        &ds.url,
        "ssm",
        "AmazonSSM.UpdateInstanceInformation",
        &body,
        creds,
    )
    .await;
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({ "raw": text })),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_pings_keep_an_instance_online_until_they_stop() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let node = register_new(&c, &ssm, ROLE).await;
    let other = register_new(&c, &ssm, ROLE).await;
    let creds = role_credentials(&node.token(&c).await.expect_ok());
    let other_creds = role_credentials(&other.token(&c).await.expect_ok());
    let describe = |id: String| {
        let ssm = ssm.clone();
        async move {
            let out = ssm
                .describe_instance_information()
                .filters(
                    InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values(id)
                        .build()
                        .expect("filter"),
                )
                .send()
                .await
                .expect("DescribeInstanceInformation");
            out.instance_information_list()[0].clone()
        }
    };
    let body = |id: &str| {
        json!({
            "InstanceId": id,
            "AgentName": "hybrid-agent",
            "AgentVersion": "0.9.1",
            "AgentStatus": "Active",
            "PlatformType": "Linux",
            "PlatformName": "Debian GNU/Linux",
            "PlatformVersion": "12",
            "IPAddress": "192.0.2.2",
            "ComputerName": "edge-rack-1",
        })
    };

    let before = now_secs();
    let (status, out) = ping(&ds, &creds, body(&node.id)).await;
    assert_eq!(status, 200, "{out}");
    let i = describe(node.id.clone()).await;
    assert_eq!(i.ping_status().map(|p| p.as_str()), Some("Online"));
    let pinged = secs(i.last_ping_date_time().expect("LastPingDateTime"));
    assert!((before..=now_secs()).contains(&pinged), "{pinged}");
    assert_eq!(i.agent_version(), Some("0.9.1"));
    assert_eq!(i.platform_type().map(|p| p.as_str()), Some("Linux"));
    assert_eq!(i.platform_name(), Some("Debian GNU/Linux"));
    assert_eq!(i.platform_version(), Some("12"));
    assert_eq!(i.ip_address(), Some("192.0.2.2"));
    assert_eq!(i.computer_name(), Some("edge-rack-1"));
    // The other instance has not pinged.
    let o = describe(other.id.clone()).await;
    assert_eq!(o.ping_status().map(|p| p.as_str()), Some("ConnectionLost"));
    let stored: serde_json::Value = reqwest::get(format!(
        "{}/_devstack/ssm/presence?instance={}",
        ds.url, node.id
    ))
    .await
    .expect("control")
    .json()
    .await
    .expect("json");
    assert_eq!(stored["agent_name"], "hybrid-agent");
    let by_platform = ssm
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("PlatformTypes")
                .values("Linux")
                .build()
                .expect("filter"),
        )
        .send()
        .await
        .expect("DescribeInstanceInformation by platform");
    assert_eq!(by_platform.instance_information_list().len(), 1);

    // An instance reports for itself only; an unknown one is refused as SSM does.
    let (status, out) = ping(&ds, &other_creds, body(&node.id)).await;
    assert_eq!(
        (status, out["__type"].as_str()),
        (400, Some("AccessDeniedException")),
        "{out}"
    );
    let (status, out) = ping(
        &ds,
        &common::admin_credentials(),
        body("mi-00000000000000000"),
    )
    .await;
    assert_eq!(
        (status, out["__type"].as_str()),
        (400, Some("InvalidInstanceId")),
        "{out}"
    );
    let mut bad = body(&node.id);
    bad["PlatformType"] = json!("Plan9");
    let (status, out) = ping(&ds, &creds, bad).await;
    assert_eq!(
        (status, out["__type"].as_str()),
        (400, Some("ValidationException")),
        "{out}"
    );
    let (status, out) = ping(&ds, &creds, json!({ "AgentName": "x" })).await;
    assert_eq!(
        (status, out["__type"].as_str()),
        (400, Some("ValidationException")),
        "{out}"
    );
    // Unsigned: the public API's authentication first.
    c.unsigned("UpdateInstanceInformation", &body(&node.id))
        .await
        .expect_err("MissingAuthenticationTokenException");

    // Past the threshold without a ping: ConnectionLost, the last ping time kept; a new ping
    // brings it back.
    let set: serde_json::Value = reqwest::Client::new()
        .put(format!(
            "{}/_devstack/ssm/connection-lost-after?secs=1.5",
            ds.url
        ))
        .send()
        .await
        .expect("control")
        .json()
        .await
        .expect("json");
    assert_eq!(set["secs"], 1.5);
    assert_eq!(
        describe(node.id.clone())
            .await
            .ping_status()
            .map(|p| p.as_str()),
        Some("Online")
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let i = describe(node.id.clone()).await;
    assert_eq!(i.ping_status().map(|p| p.as_str()), Some("ConnectionLost"));
    assert_eq!(secs(i.last_ping_date_time().expect("kept")), pinged);
    let (status, _) = ping(&ds, &creds, body(&node.id)).await;
    assert_eq!(status, 200);
    assert_eq!(
        describe(node.id.clone())
            .await
            .ping_status()
            .map(|p| p.as_str()),
        Some("Online")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_calls_must_be_signed_with_known_keys() {
    let ds = common::devstack();
    let c = Client::new(&ds);
    let anonymous = c.unsigned("DescribeActivations", &json!({})).await;
    anonymous.expect_err("MissingAuthenticationTokenException");

    let wrong_secret = aws_sdk_ssm::Client::new(
        &common::sdk_config(&ds.url, common::ADMIN_ACCESS_KEY_ID, "not-the-secret", None).await,
    );
    let e = wrong_secret
        .describe_activations()
        .send()
        .await
        .expect_err("bad secret");
    let e = e.into_service_error();
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    assert!(
        e.message().is_some_and(|m| m.contains("Canonical String")),
        "{e:?}"
    );

    let unknown = aws_sdk_ssm::Client::new(
        &common::sdk_config(&ds.url, "AKIAUNKNOWNKEY000000", "x", None).await,
    );
    let e = unknown
        .describe_activations()
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(
        e.into_service_error().code(),
        Some("UnrecognizedClientException")
    );

    // Ten minutes of skew between the client and the devstack clock.
    c.control("clock?offset_secs=600").await;
    let e = ssm_admin(&ds)
        .await
        .describe_activations()
        .send()
        .await
        .expect_err("skewed clock");
    let e = e.into_service_error();
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    assert!(
        e.message().is_some_and(|m| m.contains("Signature expired")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_returns_credentials_the_devstack_accepts() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let node = register_new(&c, &ssm, ROLE).await;
    let tok = node.token(&c).await.expect_ok();
    let expiry = tok.body["TokenExpirationDate"]
        .as_i64()
        .expect("TokenExpirationDate is epoch seconds");
    let now = now_secs();
    assert!(
        (now + 3590..=now + 3610).contains(&expiry),
        "one-hour token: {expiry} vs now {now}"
    );
    assert_eq!(tok.body["UpdateKeyPair"], json!(false));
    assert_eq!(tok.str("SecretAccessKey").len(), 40);

    // The issued credentials sign SSM calls too (the agent uses them for DeregisterManagedInstance).
    let as_node = aws_sdk_ssm::Client::new(
        &common::sdk_config(
            &ds.url,
            tok.str("AccessKeyId"),
            tok.str("SecretAccessKey"),
            Some(tok.str("SessionToken").to_string()),
        )
        .await,
    );
    as_node
        .describe_instance_information()
        .send()
        .await
        .expect("DescribeInstanceInformation with issued credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_or_misdirected_signatures_are_rejected() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let node = register_new(&c, &ssm, ROLE).await;
    let body = json!({ "Fingerprint": node.fingerprint });
    let op = "RequestManagedInstanceRoleToken";
    let now = SystemTime::now();
    let call = |t: Tamper| {
        let c = &c;
        let body = &body;
        let node = &node;
        async move { c.signed_with(op, body, &node.id, &node.key, now, &t).await }
    };

    call(Tamper::default()).await.expect_ok();

    let r = call(Tamper {
        signed_body: Some(br#"{"Fingerprint":"someone-else"}"#.to_vec()),
        ..Default::default()
    })
    .await;
    r.expect_err("InvalidSignatureException");
    let r = call(Tamper {
        signed_host: Some("ssm.us-west-2.amazonaws.com".into()),
        ..Default::default()
    })
    .await;
    r.expect_err("InvalidSignatureException");
    let r = call(Tamper {
        signed_target: Some("AmazonSSM.UpdateManagedInstancePublicKey".into()),
        ..Default::default()
    })
    .await;
    r.expect_err("InvalidSignatureException");

    // Another key, same instance id.
    let r = c
        .signed_with(op, &body, &node.id, &new_key(), now, &Tamper::default())
        .await;
    r.expect_err("InvalidSignatureException");

    // Six minutes old.
    let r = c
        .signed_with(
            op,
            &body,
            &node.id,
            &node.key,
            now - Duration::from_secs(360),
            &Tamper::default(),
        )
        .await;
    r.expect_err("InvalidSignatureException");
    assert!(r.message().contains("Signature expired"), "{}", r.message());

    // The devstack clock six minutes ahead of a fresh signature is the same skew.
    c.control("clock?offset_secs=360").await;
    let r = node.token(&c).await;
    r.expect_err("InvalidSignatureException");
    assert!(r.message().contains("Signature expired"), "{}", r.message());
    c.control("clock?offset_secs=0").await;

    let r = c
        .token(&node.id, &node.key, "a-different-fingerprint")
        .await;
    r.expect_err("MachineFingerprintDoesNotMatch");

    let r = c
        .signed_with(
            op,
            &body,
            "mi-00000000000000000",
            &node.key,
            now,
            &Tamper::default(),
        )
        .await;
    r.expect_err("InvalidInstanceId");

    // No Authorization at all.
    let r = c.unsigned(op, &body).await;
    r.expect_err("MissingAuthenticationTokenException");

    // Still fine after all of that.
    node.token(&c).await.expect_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_checks_activation_limit_expiry_and_key() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let key = spki_b64(&new_key());

    let (id, code) = create_activation(&ssm, ROLE, 1).await;
    c.register(&id, "WRONGCODEWRONGCODE00", &key, "fp")
        .await
        .expect_err("InvalidActivation");
    c.register(&uuid::Uuid::new_v4().to_string(), &code, &key, "fp")
        .await
        .expect_err("InvalidActivation");

    // Bad keys: RSA-3072, PKCS#1 instead of SPKI, right length but not a key, wrong type.
    let rsa3072 =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072).expect("keygen");
    c.register(&id, &code, &spki_b64(&rsa3072), "fp")
        .await
        .expect_err("InvalidPublicKey");
    let k = new_key();
    let pkcs1 = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::signature::KeyPair::public_key(&k).as_ref());
    c.register(&id, &code, &pkcs1, "fp")
        .await
        .expect_err("InvalidPublicKey");
    let junk = base64::engine::general_purpose::STANDARD.encode([0x30u8; 294]);
    assert_eq!(junk.len(), 392);
    c.register(&id, &code, &junk, "fp")
        .await
        .expect_err("InvalidPublicKey");
    let r = c
        .unsigned(
            "RegisterManagedInstance",
            &json!({"ActivationCode": code, "ActivationId": id, "PublicKey": key, "PublicKeyType": "Ecdsa", "Fingerprint": "fp"}),
        )
        .await;
    r.expect_err("InvalidPublicKey");

    // The refused attempts used no registration; the limit of 1 holds after one success.
    c.register(&id, &code, &key, "fp").await.expect_ok();
    let r = c.register(&id, &code, &spki_b64(&new_key()), "fp2").await;
    r.expect_err("RegistrationLimitExceeded");

    // An activation that expires in two minutes, registered three minutes later (devstack clock).
    let short = ssm
        .create_activation()
        .iam_role(ROLE)
        .registration_limit(5)
        .expiration_date(DateTime::from(SystemTime::now() + Duration::from_secs(120)))
        .send()
        .await
        .expect("CreateActivation");
    let (sid, scode) = (
        short.activation_id().expect("id"),
        short.activation_code().expect("code"),
    );
    c.control("clock?offset_secs=180").await;
    let r = c.register(sid, scode, &spki_b64(&new_key()), "fp").await;
    r.expect_err("ActivationExpired");
    assert!(
        r.message().contains("30 days"),
        "the error says activations expire: {}",
        r.message()
    );
    // Three minutes of skew is within the signature window: the SDK still gets through, and sees
    // the activation as expired.
    let d = ssm
        .describe_activations()
        .send()
        .await
        .expect("DescribeActivations");
    let a = d
        .activation_list()
        .iter()
        .find(|a| a.activation_id() == Some(sid))
        .expect("listed");
    assert!(a.expired());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_requested_by_the_control_endpoint() {
    let ds = common::devstack();
    let ssm = ssm_admin(&ds).await;
    let c = Client::new(&ds);
    let node = register_new(&c, &ssm, ROLE).await;
    assert_eq!(
        node.token(&c).await.expect_ok().body["UpdateKeyPair"],
        json!(false)
    );

    c.control(&format!("ssm/request-key-rotation?instance={}", node.id))
        .await;
    assert_eq!(
        node.token(&c).await.expect_ok().body["UpdateKeyPair"],
        json!(true)
    );

    // A bad new key is refused and changes nothing.
    let r = c
        .signed(
            "UpdateManagedInstancePublicKey",
            &json!({"NewPublicKey": "AAAA", "NewPublicKeyType": "Rsa"}),
            &node.id,
            &node.key,
        )
        .await;
    r.expect_err("InvalidPublicKey");

    let new = new_key();
    let r = c
        .signed(
            "UpdateManagedInstancePublicKey",
            &json!({"NewPublicKey": spki_b64(&new), "NewPublicKeyType": "Rsa"}),
            &node.id,
            &node.key,
        )
        .await;
    r.expect_ok();
    // The old key no longer signs; the new one does, and the rotation request is satisfied.
    node.token(&c).await.expect_err("InvalidSignatureException");
    let rotated = Registered {
        id: node.id.clone(),
        key: new,
        fingerprint: node.fingerprint.clone(),
    };
    assert_eq!(
        rotated.token(&c).await.expect_ok().body["UpdateKeyPair"],
        json!(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_state_dir_keeps_instances_keys_and_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || hybrid_devstack::Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };

    let ds = hybrid_devstack::Devstack::spawn(config()).expect("start devstack");
    let c = Client::new(&ds);
    let ssm = ssm_admin(&ds).await;
    let node = register_new(&c, &ssm, ROLE).await;
    let tok = node.token(&c).await.expect_ok();
    let (spare_id, _) = create_activation(&ssm, ROLE, 3).await;
    drop(ds);

    let ds = hybrid_devstack::Devstack::spawn(config()).expect("restart devstack");
    let c = Client::new(&ds);
    // The instance and its key survive: a signed token request works.
    node.token(&c).await.expect_ok();
    let ssm = ssm_admin(&ds).await;
    let info = ssm
        .describe_instance_information()
        .send()
        .await
        .expect("DescribeInstanceInformation");
    assert!(
        info.instance_information_list()
            .iter()
            .any(|i| i.instance_id() == Some(node.id.as_str()))
    );
    let acts = ssm
        .describe_activations()
        .send()
        .await
        .expect("DescribeActivations");
    assert!(
        acts.activation_list()
            .iter()
            .any(|a| a.activation_id() == Some(spare_id.as_str()))
    );
    // Credentials issued before the restart still verify.
    let sts = aws_sdk_sts::Client::new(
        &common::sdk_config(
            &ds.url,
            tok.str("AccessKeyId"),
            tok.str("SecretAccessKey"),
            Some(tok.str("SessionToken").to_string()),
        )
        .await,
    );
    let who = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity with pre-restart credentials");
    assert_eq!(
        who.arn(),
        Some(format!("arn:aws:sts::123456789012:assumed-role/{ROLE}/{}", node.id).as_str())
    );
}
