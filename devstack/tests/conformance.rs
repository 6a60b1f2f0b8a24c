//! Conformance: the same public-API cases, driven with the official aws-sdk-rust clients, run
//! against the devstack and against moto_server, so our stand-in is held against an independent
//! implementation. Limits moto does not enforce (batch sizes, ordering) are tested at their edges
//! in logs.rs / metrics.rs against the devstack alone.

mod common;

use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_sdk_cloudwatch::primitives::DateTime as CwDateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, Statistic};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

enum Target {
    Devstack(hybrid_devstack::Devstack),
    Moto(common::Moto),
}

impl Target {
    fn url(&self) -> &str {
        match self {
            Target::Devstack(d) => &d.url,
            Target::Moto(m) => &m.url,
        }
    }
    fn is_moto(&self) -> bool {
        matches!(self, Target::Moto(_))
    }
    async fn config(&self) -> SdkConfig {
        common::admin_config(self.url()).await
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

async fn logs_round_trip(t: &Target) {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&t.config().await);
    let group = unique("/aws/eks-hybrid/conformance");
    let stream = "mi-0123456789abcdef0/kubelet";

    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .expect("CreateLogGroup");
    let dup = logs
        .create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .expect_err("duplicate CreateLogGroup");
    assert!(
        dup.into_service_error()
            .is_resource_already_exists_exception(),
        "duplicate group must be ResourceAlreadyExistsException"
    );

    // Writing to a stream that does not exist yet: ResourceNotFoundException (the agent's cue
    // to create it and replay, instead of calling DescribeLogStreams).
    let missing = logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(stream)
        .log_events(
            InputLogEvent::builder()
                .timestamp(now_ms())
                .message("x")
                .build()
                .expect("event"),
        )
        .send()
        .await
        .expect_err("PutLogEvents to a missing stream");
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception()
    );

    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name(stream)
        .send()
        .await
        .expect("CreateLogStream");
    let dup = logs
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name(stream)
        .send()
        .await
        .expect_err("dup stream");
    assert!(
        dup.into_service_error()
            .is_resource_already_exists_exception()
    );

    let base = now_ms() - 60_000;
    let events: Vec<InputLogEvent> = (0..5)
        .map(|i| {
            InputLogEvent::builder()
                .timestamp(base + i)
                .message(format!("line {i} ✓"))
                .build()
                .expect("event")
        })
        .collect();
    let put = logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect("PutLogEvents");
    assert!(
        put.rejected_log_events_info().is_none(),
        "nothing should be rejected: {:?}",
        put.rejected_log_events_info()
    );

    let got = logs
        .get_log_events()
        .log_group_name(&group)
        .log_stream_name(stream)
        .start_from_head(true)
        .send()
        .await
        .expect("GetLogEvents");
    let messages: Vec<&str> = got.events().iter().filter_map(|e| e.message()).collect();
    assert_eq!(
        messages,
        ["line 0 ✓", "line 1 ✓", "line 2 ✓", "line 3 ✓", "line 4 ✓"]
    );
    let stamps: Vec<i64> = got.events().iter().filter_map(|e| e.timestamp()).collect();
    assert_eq!(
        stamps,
        (0..5).map(|i| base + i).collect::<Vec<_>>(),
        "original timestamps kept"
    );

    let filtered = logs
        .filter_log_events()
        .log_group_name(&group)
        .log_stream_names(stream)
        .filter_pattern("\"line 3\"")
        .send()
        .await
        .expect("FilterLogEvents");
    let found: Vec<&str> = filtered
        .events()
        .iter()
        .filter_map(|e| e.message())
        .collect();
    assert_eq!(found, ["line 3 ✓"]);

    let streams = logs
        .describe_log_streams()
        .log_group_name(&group)
        .send()
        .await
        .expect("DescribeLogStreams");
    let names: Vec<&str> = streams
        .log_streams()
        .iter()
        .filter_map(|s| s.log_stream_name())
        .collect();
    assert_eq!(names, [stream]);
}

async fn logs_out_of_order_rejected(t: &Target) {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&t.config().await);
    let group = unique("/aws/eks-hybrid/order");
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .expect("CreateLogGroup");
    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name("s")
        .send()
        .await
        .expect("CreateLogStream");
    let t0 = now_ms();
    let err = logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name("s")
        .log_events(
            InputLogEvent::builder()
                .timestamp(t0)
                .message("b")
                .build()
                .expect("event"),
        )
        .log_events(
            InputLogEvent::builder()
                .timestamp(t0 - 1000)
                .message("a")
                .build()
                .expect("event"),
        )
        .send()
        .await
        .expect_err("out-of-order batch must fail as a whole");
    assert!(err.into_service_error().is_invalid_parameter_exception());
}

/// One empty message among valid ones: CloudWatch refuses the whole call
/// (InvalidParameterException, "Member must have length greater than or equal to 1") and stores
/// none of its events.
async fn logs_empty_message_rejected(t: &Target) {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&t.config().await);
    let group = unique("/aws/eks-hybrid/empty");
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .expect("CreateLogGroup");
    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name("s")
        .send()
        .await
        .expect("CreateLogStream");
    let t0 = now_ms();
    let mut put = logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name("s");
    for (i, m) in ["before", "", "after"].into_iter().enumerate() {
        put = put.log_events(
            InputLogEvent::builder()
                .timestamp(t0 + i as i64)
                .message(m)
                .build()
                .expect("event"),
        );
    }
    let err = put
        .send()
        .await
        .expect_err("a batch with an empty message must fail as a whole");
    let err = err.into_service_error();
    assert!(err.is_invalid_parameter_exception(), "{err:?}");
    let stored = logs
        .get_log_events()
        .log_group_name(&group)
        .log_stream_name("s")
        .start_from_head(true)
        .send()
        .await
        .expect("GetLogEvents");
    assert!(stored.events().is_empty(), "{:?}", stored.events());
}

async fn metrics_round_trip(t: &Target) {
    let cw = aws_sdk_cloudwatch::Client::new(&t.config().await);
    let namespace = unique("EKSHybrid/Conformance");
    let dims = [
        Dimension::builder()
            .name("ClusterName")
            .value("demo")
            .build(),
        Dimension::builder()
            .name("NodeName")
            .value("mi-0123456789abcdef0")
            .build(),
    ];
    // Whole minutes in the past, as an agent replaying metrics after an outage would send.
    let minute = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60)
        * 60;
    let stamps: Vec<u64> = vec![minute - 600, minute - 540, minute - 480];
    let data: Vec<MetricDatum> = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            MetricDatum::builder()
                .metric_name("CredentialSecondsToExpiry")
                .set_dimensions(Some(dims.to_vec()))
                .timestamp(CwDateTime::from_secs(*s as i64))
                .value(100.0 * (i as f64 + 1.0))
                .unit(StandardUnit::Seconds)
                .build()
        })
        .collect();
    cw.put_metric_data()
        .namespace(&namespace)
        .set_metric_data(Some(data))
        .send()
        .await
        .expect("PutMetricData");

    let listed = cw
        .list_metrics()
        .namespace(&namespace)
        .send()
        .await
        .expect("ListMetrics");
    let names: Vec<&str> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name())
        .collect();
    assert_eq!(names, ["CredentialSecondsToExpiry"]);
    let listed_dims: Vec<(&str, &str)> = listed.metrics()[0]
        .dimensions()
        .iter()
        .map(|d| (d.name().unwrap_or_default(), d.value().unwrap_or_default()))
        .collect();
    assert!(
        listed_dims.contains(&("ClusterName", "demo"))
            && listed_dims.contains(&("NodeName", "mi-0123456789abcdef0"))
    );

    let stats = cw
        .get_metric_statistics()
        .namespace(&namespace)
        .metric_name("CredentialSecondsToExpiry")
        .set_dimensions(Some(dims.to_vec()))
        .start_time(CwDateTime::from_secs((minute - 3600) as i64))
        .end_time(CwDateTime::from_secs((minute + 60) as i64))
        .period(60)
        .statistics(Statistic::Sum)
        .send()
        .await
        .expect("GetMetricStatistics");
    let points = common::points(&stats, |d| d.sum());
    let want: Vec<(i64, f64)> = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| (*s as i64, 100.0 * (i as f64 + 1.0)))
        .collect();
    assert_eq!(
        points, want,
        "datapoints come back at their original timestamps"
    );
}

/// The awsQuery form of CloudWatch metrics (older SDKs, botocore's query path): the one protocol
/// both moto 5.2 and the devstack speak, so the same signed requests go to both. (moto does not
/// serve the RPC v2 CBOR protocol current aws-sdk-cloudwatch sends; that path is checked against
/// the devstack in metrics.rs and by `metrics_round_trip` below.)
async fn metrics_query_round_trip(t: &Target) {
    let namespace = unique("EKSHybrid/Query");
    let minute = (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60)
        * 60;
    let iso = |secs: u64| common::iso(secs as i64);
    let stamps = [minute - 600, minute - 540];
    let mut put = format!(
        "Action=PutMetricData&Version=2010-08-01&Namespace={}",
        urlencode(&namespace)
    );
    for (i, s) in stamps.iter().enumerate() {
        let n = i + 1;
        put.push_str(&format!(
            "&MetricData.member.{n}.MetricName=KubeletUp&MetricData.member.{n}.Value={v}&MetricData.member.{n}.Unit=Count\
             &MetricData.member.{n}.Timestamp={ts}\
             &MetricData.member.{n}.Dimensions.member.1.Name=ClusterName&MetricData.member.{n}.Dimensions.member.1.Value=demo",
            v = n * 10,
            ts = iso(*s)
        ));
    }
    let resp = common::signed_query(t.url(), "monitoring", put).await;
    let status = resp.status();
    let xml = resp.text().await.expect("PutMetricData body");
    assert_eq!(status, 200, "PutMetricData (query): {xml}");
    assert!(xml.contains("PutMetricDataResponse"), "{xml}");

    let get = format!(
        "Action=GetMetricStatistics&Version=2010-08-01&Namespace={}&MetricName=KubeletUp\
         &Dimensions.member.1.Name=ClusterName&Dimensions.member.1.Value=demo\
         &StartTime={}&EndTime={}&Period=60&Statistics.member.1=Sum",
        urlencode(&namespace),
        iso(minute - 3600),
        iso(minute + 60)
    );
    let resp = common::signed_query(t.url(), "monitoring", get).await;
    let status = resp.status();
    let xml = resp.text().await.expect("GetMetricStatistics body");
    assert_eq!(status, 200, "GetMetricStatistics (query): {xml}");
    // Both datapoints, each at its original minute, with its own sum.
    for (i, s) in stamps.iter().enumerate() {
        let ts = iso(*s);
        let at = xml
            .find(&ts)
            .unwrap_or_else(|| panic!("datapoint at {ts} missing: {xml}"));
        let member_start = xml[..at].rfind("<member>").expect("datapoint member");
        let member_end = at + xml[at..].find("</member>").expect("datapoint member end");
        let member = &xml[member_start..member_end];
        let want = (i + 1) as f64 * 10.0;
        let sum: f64 = member
            .split("<Sum>")
            .nth(1)
            .and_then(|r| r.split("</Sum>").next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Sum in {member}"));
        assert_eq!(sum, want, "sum at {ts}");
    }
}

/// CloudWatch metrics through boto3 (tests/boto3/cloudwatch_json.py): botocore 1.44 speaks
/// JSON 1.0 to CloudWatch (`X-Amz-Target: GraniteServiceVersion20100801.<Op>`,
/// `x-amzn-query-mode: true`), the third protocol CloudWatch serves. A successful put, the
/// refusals boto3 users see as `InvalidParameterValue` / `InvalidParameterCombination` /
/// `MissingParameter` (read from `x-amzn-query-error`), and the read-back through ListMetrics,
/// GetMetricData and GetMetricStatistics.
async fn metrics_boto3_json(t: &Target) {
    let url = t.url().to_string();
    let out = tokio::task::spawn_blocking(move || common::run_boto3("cloudwatch_json.py", &url))
        .await
        .expect("boto3 script thread");
    assert!(out.contains("all JSON 1.0"), "{out}");
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn sts_identity(t: &Target) {
    let sts = aws_sdk_sts::Client::new(&t.config().await);
    let id = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    let account = id.account().expect("account");
    assert_eq!(account.len(), 12, "account id is 12 digits: {account}");
    assert!(account.chars().all(|c| c.is_ascii_digit()));
    // `arn:aws:iam::<acct>:user/...` for a user, `arn:aws:sts::<acct>:assumed-role/...` for a role
    // session (what moto answers for its default identity).
    let arn = id.arn().expect("arn");
    assert!(
        (arn.starts_with("arn:aws:iam::") || arn.starts_with("arn:aws:sts::"))
            && arn.contains(&format!("::{account}:")),
        "arn: {arn}"
    );
    assert!(id.user_id().is_some_and(|u| !u.is_empty()));
}

async fn eks_describe(t: &Target) {
    let eks = aws_sdk_eks::Client::new(&t.config().await);
    let name = match t {
        // moto starts empty: create the cluster through the public API.
        Target::Moto(_) => {
            let name = unique("hybrid");
            eks.create_cluster()
                .name(&name)
                .role_arn("arn:aws:iam::123456789012:role/eks")
                .resources_vpc_config(
                    aws_sdk_eks::types::VpcConfigRequest::builder()
                        .subnet_ids("subnet-1")
                        .build(),
                )
                .send()
                .await
                .expect("CreateCluster on moto");
            name
        }
        // The devstack comes with the demo cluster, as an account with a hybrid cluster would.
        Target::Devstack(_) => "hybrid-demo".to_string(),
    };
    let out = eks
        .describe_cluster()
        .name(&name)
        .send()
        .await
        .expect("DescribeCluster");
    let cluster = out.cluster().expect("cluster");
    assert_eq!(cluster.name(), Some(name.as_str()));
    assert_eq!(
        cluster.status(),
        Some(&aws_sdk_eks::types::ClusterStatus::Active)
    );
    assert!(
        cluster
            .endpoint()
            .is_some_and(|e| e.starts_with("https://")),
        "endpoint: {:?}",
        cluster.endpoint()
    );
    let ca = cluster
        .certificate_authority()
        .and_then(|c| c.data())
        .expect("certificateAuthority.data");
    assert!(!ca.is_empty());
    if !t.is_moto() {
        // moto's CA is random base64; ours must be a real PEM certificate.
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .expect("CA data is base64");
        let pem = String::from_utf8(pem).expect("PEM is text");
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----"),
            "CA is a PEM certificate: {pem}"
        );
        let cidrs = common::remote_node_cidrs(cluster);
        assert!(
            !cidrs.is_empty(),
            "a hybrid cluster has remote node networks"
        );
    }

    let missing = eks
        .describe_cluster()
        .name(unique("nope"))
        .send()
        .await
        .expect_err("unknown cluster");
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception()
    );
}

macro_rules! conformance {
    (both: [$($case:ident),* $(,)?], devstack_only: [$($only:ident),* $(,)?] $(,)?) => {
        mod devstack {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = super::Target::Devstack(super::common::devstack());
                    super::$case(&t).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $only() {
                    let t = super::Target::Devstack(super::common::devstack());
                    super::$only(&t).await;
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let t = super::Target::Moto(super::common::moto());
                    super::$case(&t).await;
                }
            )*
        }
    };
}

conformance!(
    both: [logs_round_trip, logs_out_of_order_rejected, metrics_query_round_trip, sts_identity, eks_describe],
    // moto 5.2 answers the RPC v2 CBOR path with 404, and stores an empty message with a 200
    // where CloudWatch refuses the call (the refusal AWS users report: "Value '' at
    // 'logEvents.N.member.message' failed to satisfy constraint: Member must have length greater
    // than or equal to 1"); the devstack fails where CloudWatch fails. moto 5.2 serves
    // CloudWatch's JSON 1.0 but accepts 31 dimensions and unknown units, lists a metric once
    // per datapoint and does not align GetMetricData periods (cloudwatch_json.py's header).
    devstack_only: [metrics_round_trip, logs_empty_message_rejected, metrics_boto3_json],
);
