//! CloudWatch metrics of the devstack: the official aws-sdk-cloudwatch client (Smithy RPC v2
//! CBOR) for the limits at their edges and the read-back of datapoints at their original
//! timestamps, and hand-built awsQuery requests (signed with aws-sigv4, independent of the
//! devstack's verifier) for the legacy protocol and the exact 1 MB body edge.

mod common;

use std::time::SystemTime;

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, DimensionFilter, Metric, MetricDataQuery, MetricDatum, MetricStat, ScanBy,
    StandardUnit, Statistic, StatisticSet,
};
use hybrid_devstack::{Config, Devstack};

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The start of the current minute, minus `minutes_ago` minutes.
fn minute(minutes_ago: i64) -> i64 {
    (now_secs() / 60) * 60 - minutes_ago * 60
}

async fn client(ds: &Devstack) -> Client {
    Client::new(&common::admin_config(&ds.url).await)
}

fn dim(name: &str, value: &str) -> Dimension {
    Dimension::builder().name(name).value(value).build()
}

fn datum(name: &str, secs: i64, value: f64) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(name)
        .timestamp(DateTime::from_secs(secs))
        .value(value)
        .unit(StandardUnit::Count)
        .build()
}

/// Sends PutMetricData that must fail; returns (awsQuery error code, message).
async fn put_err(cw: &Client, namespace: &str, data: Vec<MetricDatum>) -> (String, String) {
    let err = cw
        .put_metric_data()
        .namespace(namespace)
        .set_metric_data(Some(data))
        .send()
        .await
        .expect_err("PutMetricData must fail");
    let svc = err.into_service_error();
    (
        svc.code().unwrap_or_default().to_string(),
        svc.message().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_datums_are_accepted_and_one_more_rejected() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    let t = minute(5);
    let batch = |n: usize| {
        (0..n)
            .map(|i| datum("Requests", t, i as f64))
            .collect::<Vec<_>>()
    };
    cw.put_metric_data()
        .namespace("Edge/Count")
        .set_metric_data(Some(batch(1_000)))
        .send()
        .await
        .expect("1,000 datums");

    let err = cw
        .put_metric_data()
        .namespace("Edge/Count")
        .set_metric_data(Some(batch(1_001)))
        .send()
        .await
        .expect_err("1,001");
    let svc = err.into_service_error();
    assert!(svc.is_invalid_parameter_value_exception(), "{svc:?}");
    assert_eq!(svc.code(), Some("InvalidParameterValue"));
    assert_eq!(
        svc.message(),
        Some("The collection MetricData must not have a size greater than 1000.")
    );

    let stats = cw
        .get_metric_statistics()
        .namespace("Edge/Count")
        .metric_name("Requests")
        .start_time(DateTime::from_secs(t))
        .end_time(DateTime::from_secs(t + MINUTE))
        .period(60)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .expect("GetMetricStatistics");
    assert_eq!(
        stats.datapoints()[0].sample_count(),
        Some(1_000.0),
        "only the accepted call was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_dimensions_are_accepted_and_thirty_one_rejected() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    let with_dims = |n: usize| {
        MetricDatum::builder()
            .metric_name("Wide")
            .set_dimensions(Some(
                (0..n).map(|i| dim(&format!("D{i:02}"), "v")).collect(),
            ))
            .value(1.0)
            .build()
    };
    cw.put_metric_data()
        .namespace("Edge/Dims")
        .metric_data(with_dims(30))
        .send()
        .await
        .expect("30 dimensions");
    let (code, message) = put_err(&cw, "Edge/Dims", vec![with_dims(30), with_dims(31)]).await;
    assert_eq!(code, "InvalidParameterValue");
    assert_eq!(
        message,
        "The collection MetricData.member.2.Dimensions must not have a size greater than 30."
    );
    let listed = cw
        .list_metrics()
        .namespace("Edge/Dims")
        .send()
        .await
        .expect("ListMetrics");
    assert_eq!(listed.metrics().len(), 1);
    assert_eq!(listed.metrics()[0].dimensions().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_reach_two_weeks_back_and_two_hours_ahead() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    // A minute of margin on each side: the devstack's clock moves on between here and there.
    let now = now_secs();
    cw.put_metric_data()
        .namespace("Edge/Time")
        .metric_data(datum("Age", now - 14 * DAY + MINUTE, 1.0))
        .metric_data(datum("Age", now + 2 * HOUR - MINUTE, 2.0))
        .send()
        .await
        .expect("inside the window");
    let (code, message) = put_err(
        &cw,
        "Edge/Time",
        vec![
            datum("Age", now, 1.0),
            datum("Age", now - 14 * DAY - MINUTE, 1.0),
        ],
    )
    .await;
    assert_eq!(code, "InvalidParameterValue");
    assert_eq!(
        message,
        "The parameter MetricData.member.2.Timestamp must specify a time within the past two weeks."
    );
    let (code, message) = put_err(
        &cw,
        "Edge/Time",
        vec![datum("Age", now + 2 * HOUR + MINUTE, 1.0)],
    )
    .await;
    assert_eq!(code, "InvalidParameterValue");
    assert_eq!(
        message,
        "The parameter MetricData.member.1.Timestamp must specify a time no more than two hours in the future."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_counts_and_statistic_sets_aggregate_and_bad_combinations_fail() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    let t = minute(10);
    let values = MetricDatum::builder()
        .metric_name("Latency")
        .timestamp(DateTime::from_secs(t))
        .values(1.0)
        .values(2.0)
        .values(3.0)
        .counts(1.0)
        .counts(1.0)
        .counts(2.0)
        .unit(StandardUnit::Milliseconds)
        .build();
    let set = MetricDatum::builder()
        .metric_name("Latency")
        .timestamp(DateTime::from_secs(t + MINUTE))
        .statistic_values(
            StatisticSet::builder()
                .sample_count(10.0)
                .sum(100.0)
                .minimum(1.0)
                .maximum(50.0)
                .build(),
        )
        .unit(StandardUnit::Milliseconds)
        .build();
    cw.put_metric_data()
        .namespace("Agg")
        .metric_data(values)
        .metric_data(set)
        .send()
        .await
        .expect("PutMetricData");

    let out = cw
        .get_metric_statistics()
        .namespace("Agg")
        .metric_name("Latency")
        .start_time(DateTime::from_secs(t))
        .end_time(DateTime::from_secs(t + 2 * MINUTE))
        .period(60)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Sum)
        .statistics(Statistic::Average)
        .statistics(Statistic::Minimum)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .expect("GetMetricStatistics");
    let mut points: Vec<_> = out.datapoints().to_vec();
    points.sort_by_key(|p| p.timestamp().map(|t| t.secs()));
    let row = |p: &aws_sdk_cloudwatch::types::Datapoint| {
        (
            p.sample_count(),
            p.sum(),
            p.average(),
            p.minimum(),
            p.maximum(),
        )
    };
    assert_eq!(
        row(&points[0]),
        (Some(4.0), Some(9.0), Some(2.25), Some(1.0), Some(3.0))
    );
    assert_eq!(
        row(&points[1]),
        (Some(10.0), Some(100.0), Some(10.0), Some(1.0), Some(50.0))
    );
    assert_eq!(points[0].unit(), Some(&StandardUnit::Milliseconds));

    let both = MetricDatum::builder()
        .metric_name("X")
        .value(1.0)
        .statistic_values(
            StatisticSet::builder()
                .sample_count(1.0)
                .sum(1.0)
                .minimum(1.0)
                .maximum(1.0)
                .build(),
        )
        .build();
    let err = cw
        .put_metric_data()
        .namespace("Agg")
        .metric_data(both)
        .send()
        .await
        .expect_err("Value with StatisticValues");
    assert!(
        err.into_service_error()
            .is_invalid_parameter_combination_exception()
    );

    let mismatched = MetricDatum::builder()
        .metric_name("X")
        .values(1.0)
        .values(2.0)
        .counts(1.0)
        .build();
    let (code, message) = put_err(&cw, "Agg", vec![mismatched]).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "InvalidParameterValue",
            "The parameters MetricData.member.1.Values and MetricData.member.1.Counts must be of the same size."
        )
    );

    let nameless = MetricDatum::builder().value(1.0).build();
    let err = cw
        .put_metric_data()
        .namespace("Agg")
        .metric_data(nameless)
        .send()
        .await
        .expect_err("no MetricName");
    let svc = err.into_service_error();
    assert!(svc.is_missing_required_parameter_exception(), "{svc:?}");
    assert_eq!(svc.code(), Some("MissingParameter"));

    let (code, _) = put_err(&cw, "AWS/EC2", vec![datum("X", t, 1.0)]).await;
    assert_eq!(
        code, "InvalidParameterValue",
        "the AWS/ namespaces are reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datapoints_read_back_at_their_original_timestamps() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    let dims = vec![
        dim("ClusterName", "hybrid-demo"),
        dim("NodeName", "mi-0123456789abcdef0"),
    ];
    let stamps = [minute(30), minute(20), minute(10)];
    let data: Vec<MetricDatum> = stamps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            MetricDatum::builder()
                .metric_name("KubeletUp")
                // Dimension order does not matter for the metric's identity.
                .set_dimensions(Some(if i % 2 == 0 {
                    dims.clone()
                } else {
                    dims.iter().rev().cloned().collect()
                }))
                .timestamp(DateTime::from_secs(*s))
                .value(i as f64 + 1.0)
                .build()
        })
        .collect();
    cw.put_metric_data()
        .namespace("RoundTrip")
        .set_metric_data(Some(data))
        .send()
        .await
        .expect("PutMetricData");

    let stats = cw
        .get_metric_statistics()
        .namespace("RoundTrip")
        .metric_name("KubeletUp")
        .set_dimensions(Some(dims.clone()))
        .start_time(DateTime::from_secs(minute(60)))
        .end_time(DateTime::from_secs(minute(0) + MINUTE))
        .period(60)
        .statistics(Statistic::Maximum)
        .send()
        .await
        .expect("GetMetricStatistics");
    let points = common::points(&stats, |d| d.maximum());
    assert_eq!(
        points,
        [(stamps[0], 1.0), (stamps[1], 2.0), (stamps[2], 3.0)]
    );
    assert_eq!(stats.label(), Some("KubeletUp"));

    let query = |id: &str, period: i32, stat: &str| {
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(
                        Metric::builder()
                            .namespace("RoundTrip")
                            .metric_name("KubeletUp")
                            .set_dimensions(Some(dims.clone()))
                            .build(),
                    )
                    .period(period)
                    .stat(stat)
                    .build(),
            )
            .build()
    };
    let data = cw
        .get_metric_data()
        .metric_data_queries(query("perminute", 60, "Sum"))
        .metric_data_queries(query("hourly", 3600, "SampleCount"))
        .start_time(DateTime::from_secs(minute(60)))
        .end_time(DateTime::from_secs(minute(0) + MINUTE))
        .scan_by(ScanBy::TimestampAscending)
        .send()
        .await
        .expect("GetMetricData");
    let results = data.metric_data_results();
    assert_eq!(results[0].id(), Some("perminute"));
    let secs: Vec<i64> = results[0].timestamps().iter().map(|t| t.secs()).collect();
    assert_eq!(secs, stamps);
    assert_eq!(results[0].values(), [1.0, 2.0, 3.0]);
    assert_eq!(
        results[0].status_code(),
        Some(&aws_sdk_cloudwatch::types::StatusCode::Complete)
    );
    let hourly_total: f64 = results[1].values().iter().sum();
    assert_eq!(
        hourly_total, 3.0,
        "coarser periods aggregate the same datapoints"
    );

    let other_dims = cw
        .get_metric_statistics()
        .namespace("RoundTrip")
        .metric_name("KubeletUp")
        .start_time(DateTime::from_secs(minute(60)))
        .end_time(DateTime::from_secs(minute(0) + MINUTE))
        .period(60)
        .statistics(Statistic::Sum)
        .send()
        .await
        .expect("GetMetricStatistics without dimensions");
    assert!(
        other_dims.datapoints().is_empty(),
        "a metric is identified by its exact dimension set"
    );

    let too_many = cw
        .get_metric_statistics()
        .namespace("RoundTrip")
        .metric_name("KubeletUp")
        .start_time(DateTime::from_secs(minute(0) - 1441 * MINUTE))
        .end_time(DateTime::from_secs(minute(0)))
        .period(60)
        .statistics(Statistic::Sum)
        .send()
        .await
        .expect_err("1,441 datapoints");
    assert!(
        too_many
            .into_service_error()
            .is_invalid_parameter_combination_exception()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_metrics_filters_by_namespace_name_and_dimensions() {
    let ds = common::devstack();
    let cw = client(&ds).await;
    let with = |name: &str, dims: Vec<Dimension>| {
        MetricDatum::builder()
            .metric_name(name)
            .set_dimensions(Some(dims))
            .value(1.0)
            .build()
    };
    cw.put_metric_data()
        .namespace("List/A")
        .metric_data(with("Up", vec![dim("Node", "a")]))
        .metric_data(with("Up", vec![dim("Node", "b")]))
        .metric_data(with(
            "Restarts",
            vec![dim("Node", "a"), dim("Unit", "kubelet")],
        ))
        .send()
        .await
        .expect("PutMetricData");
    cw.put_metric_data()
        .namespace("List/B")
        .metric_data(with("Up", vec![]))
        .send()
        .await
        .expect("PutMetricData");

    let count =
        |out: aws_sdk_cloudwatch::operation::list_metrics::ListMetricsOutput| out.metrics().len();
    assert_eq!(
        count(
            cw.list_metrics()
                .namespace("List/A")
                .send()
                .await
                .expect("by namespace")
        ),
        3
    );
    assert_eq!(
        count(
            cw.list_metrics()
                .namespace("List/A")
                .metric_name("Up")
                .send()
                .await
                .expect("by name")
        ),
        2
    );
    let node_a = DimensionFilter::builder().name("Node").value("a").build();
    assert_eq!(
        count(
            cw.list_metrics()
                .namespace("List/A")
                .dimensions(node_a)
                .send()
                .await
                .expect("by dimension value")
        ),
        2
    );
    let any_unit = DimensionFilter::builder().name("Unit").build();
    assert_eq!(
        count(
            cw.list_metrics()
                .dimensions(any_unit)
                .send()
                .await
                .expect("by dimension name")
        ),
        1
    );
    assert_eq!(count(cw.list_metrics().send().await.expect("all")), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datapoints_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let t = minute(3);
    {
        let ds = Devstack::spawn(config()).expect("start devstack");
        let cw = client(&ds).await;
        cw.put_metric_data()
            .namespace("Persist")
            .metric_data(datum("Up", t, 1.0))
            .metric_data(datum("Up", t, 2.0))
            .send()
            .await
            .expect("PutMetricData");
    }
    let ds = Devstack::spawn(config()).expect("restart devstack");
    let cw = client(&ds).await;
    let stats = cw
        .get_metric_statistics()
        .namespace("Persist")
        .metric_name("Up")
        .start_time(DateTime::from_secs(t))
        .end_time(DateTime::from_secs(t + MINUTE))
        .period(60)
        .statistics(Statistic::Sum)
        .send()
        .await
        .expect("GetMetricStatistics");
    assert_eq!(stats.datapoints().len(), 1);
    assert_eq!(stats.datapoints()[0].sum(), Some(3.0));
    assert_eq!(stats.datapoints()[0].timestamp().map(|d| d.secs()), Some(t));
}

// ---------------------------------------------------------------------------------------------
// The legacy awsQuery protocol, with hand-built bodies.

/// POSTs a form body to `/` signed for `monitoring` with the admin key.
async fn signed_query(url: &str, body: String) -> reqwest::Response {
    common::signed_query(url, "monitoring", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_protocol_round_trip_answers_in_xml() {
    let ds = common::devstack();
    let t = minute(7);
    let put = format!(
        "Action=PutMetricData&Version=2010-08-01&Namespace=Legacy%2FAgent\
         &MetricData.member.1.MetricName=Heartbeat&MetricData.member.1.Value=5&MetricData.member.1.Unit=Count\
         &MetricData.member.1.Timestamp={}\
         &MetricData.member.1.Dimensions.member.1.Name=Node&MetricData.member.1.Dimensions.member.1.Value=mi-1\
         &MetricData.member.2.MetricName=Heartbeat&MetricData.member.2.Timestamp={}\
         &MetricData.member.2.Values.member.1=1&MetricData.member.2.Values.member.2=4\
         &MetricData.member.2.Dimensions.member.1.Name=Node&MetricData.member.2.Dimensions.member.1.Value=mi-1",
        common::iso(t),
        common::iso(t)
    );
    let resp = signed_query(&ds.url, put).await;
    assert_eq!(resp.status(), 200);
    let xml = resp.text().await.expect("body");
    assert!(
        xml.starts_with(
            "<PutMetricDataResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">"
        ),
        "{xml}"
    );

    let get = format!(
        "Action=GetMetricStatistics&Version=2010-08-01&Namespace=Legacy%2FAgent&MetricName=Heartbeat\
         &Dimensions.member.1.Name=Node&Dimensions.member.1.Value=mi-1\
         &StartTime={}&EndTime={}&Period=60&Statistics.member.1=Sum&Statistics.member.2=SampleCount",
        common::iso(t),
        common::iso(t + MINUTE)
    );
    let resp = signed_query(&ds.url, get).await;
    assert_eq!(resp.status(), 200);
    let xml = resp.text().await.expect("body");
    assert!(
        xml.contains(&format!("<Timestamp>{}</Timestamp>", common::iso(t))),
        "{xml}"
    );
    assert!(
        xml.contains("<Sum>10.0</Sum>") && xml.contains("<SampleCount>3.0</SampleCount>"),
        "{xml}"
    );

    let bad = signed_query(
        &ds.url,
        "Action=PutMetricData&Version=2010-08-01&Namespace=X".into(),
    )
    .await;
    assert_eq!(bad.status(), 400);
    let xml = bad.text().await.expect("body");
    assert!(xml.contains("<Code>MissingParameter</Code>"), "{xml}");
}

/// A PutMetricData form body of exactly `len` bytes: 1,000 distinct metrics whose dimension
/// values are padded to reach the length.
fn put_body_of_len(len: usize) -> String {
    let datum = |i: usize, pad: usize| {
        format!(
            "&MetricData.member.{i}.MetricName=M&MetricData.member.{i}.Value=1\
             &MetricData.member.{i}.Dimensions.member.1.Name=D&MetricData.member.{i}.Dimensions.member.1.Value={i:04}{}",
            "a".repeat(pad)
        )
    };
    let head = "Action=PutMetricData&Version=2010-08-01&Namespace=Edge%2FBody".to_string();
    let fixed: usize = head.len() + (1..=1000).map(|i| datum(i, 0).len()).sum::<usize>();
    let pad_total = len - fixed;
    let (each, extra) = (pad_total / 1000, pad_total % 1000);
    assert!(
        each < 1024,
        "dimension values stay within their 1,024-character limit"
    );
    let body = head
        + &(1..=1000)
            .map(|i| datum(i, each + usize::from(i <= extra)))
            .collect::<String>();
    assert_eq!(body.len(), len);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mb_body_is_accepted_and_one_byte_more_rejected() {
    let ds = common::devstack();
    let at_limit = signed_query(&ds.url, put_body_of_len(1_048_576)).await;
    assert_eq!(
        at_limit.status(),
        200,
        "{}",
        at_limit.text().await.unwrap_or_default()
    );
    let over = signed_query(&ds.url, put_body_of_len(1_048_577)).await;
    assert_eq!(over.status(), 413);
    let xml = over.text().await.expect("body");
    assert!(xml.contains("<Code>RequestEntityTooLarge</Code>"), "{xml}");

    let cw = client(&ds).await;
    let listed = cw
        .list_metrics()
        .namespace("Edge/Body")
        .send()
        .await
        .expect("ListMetrics");
    assert_eq!(
        listed.metrics().len(),
        500,
        "first page of the 1,000 stored metrics"
    );
    assert!(listed.next_token().is_some());
}
