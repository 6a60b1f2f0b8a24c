"""boto3 against a CloudWatch endpoint, in the protocol botocore picks for it (JSON 1.0 in
botocore 1.44, the venv's: `X-Amz-Target: GraniteServiceVersion20100801.<Op>`,
`Content-Type: application/x-amz-json-1.0`, `x-amzn-query-mode: true`).

Run by devstack/tests/conformance.rs as `cloudwatch_json.py URL`, credentials in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, against the devstack only: moto 5.2 speaks this
protocol too but accepts 31 dimensions and unknown units, lists a metric once per datapoint and
does not align GetMetricData periods, so it cannot be held to this script. Exits non-zero (an AssertionError or a ClientError
with its traceback) on the first mismatch; prints one line per step otherwise.
"""

import datetime
import math
import sys
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

url = sys.argv[1]
cw = boto3.client(
    "cloudwatch",
    endpoint_url=url,
    region_name="us-west-2",
    config=Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=30),
)

# Every request this client sends, to prove which protocol went over the wire.
sent = []
cw.meta.events.register("before-send", lambda request, **_: sent.append(dict(request.headers)))


def header(h, name):
    for k, v in h.items():
        if k.lower() == name.lower():
            return v.decode() if isinstance(v, bytes) else v
    return None


def expect_error(code, call, **kwargs):
    """Calls `call(**kwargs)`, which must fail with ClientError `code` (the awsQuery code) and
    with the `x-amzn-query-error: <code>;Sender` header it was read from."""
    try:
        call(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"want {code}, got {got}: {e.response}"
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == 400, f"{code}: HTTP {status}"
        assert e.response["Error"].get("Message"), f"{code} without a message: {e.response}"
        qe = e.response["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-query-error")
        assert qe == f"{code};Sender", f"x-amzn-query-error: {qe!r}"
        print(f"ok: {call.__name__} refused with {code}: {e.response['Error']['Message']}")
        return e
    raise AssertionError(f"{call.__name__} succeeded; want {code}")


print(f"botocore {botocore.__version__}, protocol {cw.meta.service_model.resolved_protocol}")
ns = f"EKSHybrid/Boto3-{uuid.uuid4().hex}"
now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
stamps = [now - datetime.timedelta(minutes=m) for m in (10, 9)]
dims = [{"Name": "ClusterName", "Value": "demo"}, {"Name": "NodeName", "Value": "mi-0123"}]

cw.put_metric_data(
    Namespace=ns,
    MetricData=[
        {"MetricName": "KubeletUp", "Dimensions": dims, "Timestamp": t, "Value": float(i + 1) * 10,
         "Unit": "Count"}
        for i, t in enumerate(stamps)
    ]
    + [{"MetricName": "PodCount", "Dimensions": dims, "Timestamp": stamps[0],
        "StatisticValues": {"SampleCount": 2, "Sum": 7, "Minimum": 3, "Maximum": 4}}],
)
h = sent[-1]
assert header(h, "X-Amz-Target") == "GraniteServiceVersion20100801.PutMetricData", h
assert header(h, "Content-Type") == "application/x-amz-json-1.0", h
assert header(h, "x-amzn-query-mode") == "true", h
print("ok: PutMetricData over JSON 1.0")

# Validation, with the awsQuery codes boto3 users match on (`e.response["Error"]["Code"]`, and
# the modeled exception classes).
e = expect_error("InvalidParameterValue", cw.put_metric_data, Namespace=ns,
                 MetricData=[{"MetricName": "KubeletUp", "Value": math.nan}])
assert isinstance(e, cw.exceptions.InvalidParameterValueException), type(e)
too_many = [{"Name": f"d{i}", "Value": "v"} for i in range(31)]
expect_error("InvalidParameterValue", cw.put_metric_data, Namespace=ns,
             MetricData=[{"MetricName": "KubeletUp", "Dimensions": too_many, "Value": 1.0}])
expect_error("InvalidParameterValue", cw.put_metric_data, Namespace=ns,
             MetricData=[{"MetricName": "KubeletUp", "Value": 1.0, "Unit": "Parsecs"}])
e = expect_error("InvalidParameterCombination", cw.put_metric_data, Namespace=ns,
                 MetricData=[{"MetricName": "KubeletUp", "Value": 1.0, "Values": [1.0]}])
assert isinstance(e, cw.exceptions.InvalidParameterCombinationException), type(e)
# botocore refuses a missing required member itself; without its check the service must.
unchecked = boto3.client(
    "cloudwatch", endpoint_url=url, region_name="us-west-2",
    config=Config(retries={"max_attempts": 1}, parameter_validation=False),
)
e = expect_error("MissingParameter", unchecked.put_metric_data, Namespace=ns,
                 MetricData=[{"MetricName": "KubeletUp", "Value": 1.0,
                              "Dimensions": [{"Name": "ClusterName"}]}])
assert isinstance(e, unchecked.exceptions.MissingRequiredParameterException), type(e)

# Read-back: what was accepted, and nothing of the refused calls.
listed = cw.list_metrics(Namespace=ns)["Metrics"]
got = sorted((m["MetricName"], sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))
             for m in listed)
want_dims = sorted((d["Name"], d["Value"]) for d in dims)
assert got == [("KubeletUp", want_dims), ("PodCount", want_dims)], got
print(f"ok: ListMetrics {got}")

start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(minutes=1)
data = cw.get_metric_data(
    StartTime=start, EndTime=end, ScanBy="TimestampAscending",
    MetricDataQueries=[
        {"Id": "up", "MetricStat": {"Metric": {"Namespace": ns, "MetricName": "KubeletUp",
                                               "Dimensions": dims}, "Period": 60, "Stat": "Sum"}},
        {"Id": "pods", "MetricStat": {"Metric": {"Namespace": ns, "MetricName": "PodCount",
                                                 "Dimensions": dims}, "Period": 60,
                                      "Stat": "Average"}},
    ],
)["MetricDataResults"]
by_id = {r["Id"]: r for r in data}
assert by_id["up"]["Timestamps"] == stamps, by_id["up"]
assert by_id["up"]["Values"] == [10.0, 20.0], by_id["up"]
assert by_id["up"]["StatusCode"] == "Complete", by_id["up"]
assert by_id["pods"]["Timestamps"] == [stamps[0]] and by_id["pods"]["Values"] == [3.5], by_id["pods"]
print(f"ok: GetMetricData {by_id['up']['Values']} at {by_id['up']['Timestamps']}")

stats = cw.get_metric_statistics(Namespace=ns, MetricName="KubeletUp", Dimensions=dims,
                                 StartTime=start, EndTime=end, Period=60,
                                 Statistics=["Sum", "SampleCount"], Unit="Count")
points = sorted((p["Timestamp"], p["Sum"], p["SampleCount"], p["Unit"]) for p in stats["Datapoints"])
assert points == [(stamps[0], 10.0, 1.0, "Count"), (stamps[1], 20.0, 1.0, "Count")], points
print(f"ok: GetMetricStatistics {points}")

targets = [header(h, "X-Amz-Target") for h in sent]
assert all(t and t.startswith("GraniteServiceVersion20100801.") for t in targets), targets
print(f"ok: {len(sent)} requests, all JSON 1.0")
