//! Where the EKS images live: the ECR account, region and DNS suffix of the registry holding the
//! pause (sandbox) image, and the registry host patterns the ECR image credential provider
//! answers for.
//!
//! The manifest's `region_config` is authoritative (nodeadm internal/aws/manifest.go
//! `RegionData`: `ecr_account_id`, `dns_suffix` per region): with an account there, the image is
//! pulled from that account in the node's own region. Without one, nodeadm's table applies
//! (internal/aws/ecr/ecr.go `getEKSRegistryCoordinates`): a per-region account for China,
//! GovCloud and the ISO partitions, a per-prefix fallback, and otherwise account 602401143452 in
//! **us-west-2** — not in the node's region, because opt-in regions do not replicate that
//! account's images.
//!
//! FIPS endpoints (`ecr-fips`, which nodeadm picks when the kernel runs in FIPS mode and the name
//! resolves) are not chosen here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The EKS images' account in the regions that are not opt-in (nodeadm internal/aws/ecr/ecr.go
/// `nonOptInRegionAccount`).
pub const NON_OPT_IN_ACCOUNT: &str = "602401143452";
/// Where [`NON_OPT_IN_ACCOUNT`]'s images are pulled from when the manifest has no account for
/// the region (nodeadm internal/aws/ecr/ecr.go `getEKSRegistryCoordinates`).
pub const NON_OPT_IN_REGION: &str = "us-west-2";
/// Accounts per region (nodeadm internal/aws/ecr/ecr.go `accountsByRegion`).
const ACCOUNTS_BY_REGION: [(&str, &str); 9] = [
    ("cn-north-1", "918309763551"),
    ("cn-northwest-1", "961992271922"),
    ("eu-isoe-west-1", "249663109785"),
    ("us-gov-east-1", "151742754352"),
    ("us-gov-west-1", "013241004608"),
    ("us-iso-east-1", "725322719131"),
    ("us-iso-west-1", "608367168043"),
    ("us-isob-east-1", "187977181151"),
    ("us-isof-south-1", "676585237158"),
];
/// Region prefixes not in [`ACCOUNTS_BY_REGION`]: account and the region to pull from (nodeadm
/// internal/aws/ecr/ecr.go, in its order: `us-iso-` is tested before `us-isob-`, which it
/// therefore never reaches; kept as nodeadm has it).
const ACCOUNTS_BY_PREFIX: [(&str, &str, &str); 5] = [
    ("us-gov-", "013241004608", "us-gov-west-1"),
    ("cn-", "961992271922", "cn-northwest-1"),
    ("us-iso-", "725322719131", "us-iso-east-1"),
    ("us-isob-", "187977181151", "us-isob-east-1"),
    ("us-isof-", "676585237158", "us-isof-south-1"),
];
/// DNS suffix per region prefix, through the partition (nodeadm internal/aws/partition.go
/// `GetPartitionFromRegionFallback` and `GetPartitionDNSSuffix`); longest prefixes first.
const DNS_SUFFIX_BY_PREFIX: [(&str, &str); 7] = [
    ("cn-", "amazonaws.com.cn"),
    ("us-gov-", "amazonaws.com"),
    ("us-isob-", "sc2s.sgov.gov"),
    ("us-isoe-", "cloud.adc-e.uk"),
    ("us-isof-", "csp.hci.ic.gov"),
    ("us-iso-", "c2s.ic.gov"),
    ("eusc-", "amazonaws.eu"),
];
/// The commercial partition's DNS suffix (nodeadm internal/aws/partition.go).
pub const DEFAULT_DNS_SUFFIX: &str = "amazonaws.com";
/// The pause image's repository and tag (nodeadm internal/aws/ecr/ecr.go `GetSandboxImage`).
pub const PAUSE_REPOSITORY: &str = "eks/pause";
pub const PAUSE_TAG: &str = "3.5";
/// Registry hosts the ECR credential provider answers for (nodeadm
/// internal/kubelet/image-credential-provider.go `MatchImages`).
pub const CREDENTIAL_PROVIDER_MATCH_IMAGES: [&str; 5] = [
    "*.dkr.ecr.*.amazonaws.com",
    "*.dkr.ecr.*.amazonaws.com.cn",
    "*.dkr.ecr-fips.*.amazonaws.com",
    "*.dkr.ecr.*.c2s.ic.gov",
    "*.dkr.ecr.*.sc2s.sgov.gov",
];

/// One region's entry of the manifest's `region_config` (nodeadm internal/aws/manifest.go
/// `RegionData`). Every field is optional: the manifest is someone else's and grows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionConfig {
    #[serde(default)]
    pub ecr_account_id: String,
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub dns_suffix: String,
    #[serde(default)]
    pub cred_providers: BTreeMap<String, bool>,
}

/// An image reference: `registry/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host, e.g. `602401143452.dkr.ecr.us-west-2.amazonaws.com`.
    pub registry: String,
    pub repository: String,
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// The DNS suffix for `region`: the manifest's, else its partition's.
pub fn dns_suffix(region: &str, region_config: Option<&RegionConfig>) -> String {
    if let Some(rc) = region_config.filter(|rc| !rc.dns_suffix.is_empty()) {
        return rc.dns_suffix.clone();
    }
    DNS_SUFFIX_BY_PREFIX
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or(DEFAULT_DNS_SUFFIX, |(_, s)| s)
        .to_owned()
}

/// The account holding the EKS images and the region to pull them from.
pub fn coordinates(region: &str, region_config: Option<&RegionConfig>) -> (String, String) {
    if let Some(rc) = region_config.filter(|rc| !rc.ecr_account_id.is_empty()) {
        return (rc.ecr_account_id.clone(), region.to_owned());
    }
    if let Some((_, account)) = ACCOUNTS_BY_REGION.iter().find(|(r, _)| *r == region) {
        return ((*account).to_owned(), region.to_owned());
    }
    if let Some((_, account, from)) = ACCOUNTS_BY_PREFIX
        .iter()
        .find(|(prefix, _, _)| region.starts_with(prefix))
    {
        return ((*account).to_owned(), (*from).to_owned());
    }
    (NON_OPT_IN_ACCOUNT.to_owned(), NON_OPT_IN_REGION.to_owned())
}

/// The EKS registry host for a node in `region`.
pub fn registry(region: &str, region_config: Option<&RegionConfig>) -> String {
    let (account, from) = coordinates(region, region_config);
    let suffix = dns_suffix(region, region_config);
    format!("{account}.dkr.ecr.{from}.{suffix}")
}

/// The pause (sandbox) image for a node in `region`: what containerd's config names, what
/// kubelet below 1.29 is told with `--pod-infra-container-image`, and what join pre-pulls with an
/// ECR authorization token.
pub fn sandbox_image(region: &str, region_config: Option<&RegionConfig>) -> ImageRef {
    ImageRef {
        registry: registry(region, region_config),
        repository: PAUSE_REPOSITORY.to_owned(),
        tag: PAUSE_TAG.to_owned(),
    }
}

/// The credential provider's `matchImages`: nodeadm's list, plus the node's own registry suffix
/// when the manifest names one the list does not cover (a partition added after nodeadm's list).
pub fn match_images(region: &str, region_config: Option<&RegionConfig>) -> Vec<String> {
    let mut out: Vec<String> = CREDENTIAL_PROVIDER_MATCH_IMAGES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let own = format!("*.dkr.ecr.*.{}", dns_suffix(region, region_config));
    if !out.contains(&own) {
        out.push(own);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(account: &str, suffix: &str) -> RegionConfig {
        RegionConfig {
            ecr_account_id: account.into(),
            dns_suffix: suffix.into(),
            ..Default::default()
        }
    }

    #[test]
    fn manifest_account_is_used_in_the_nodes_own_region() {
        let r = rc("900889452093", "amazonaws.com");
        assert_eq!(
            sandbox_image("ap-east-2", Some(&r)).to_string(),
            "900889452093.dkr.ecr.ap-east-2.amazonaws.com/eks/pause:3.5"
        );
    }

    #[test]
    fn without_the_manifest_an_opt_in_region_pulls_from_us_west_2() {
        assert_eq!(
            sandbox_image("af-south-1", None).to_string(),
            "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5"
        );
        // An entry without an account falls back too, keeping its DNS suffix.
        assert_eq!(
            registry("me-central-1", Some(&rc("", ""))),
            "602401143452.dkr.ecr.us-west-2.amazonaws.com"
        );
    }

    #[test]
    fn fallback_table_per_region_and_prefix() {
        for (region, want) in [
            (
                "us-gov-east-1",
                "151742754352.dkr.ecr.us-gov-east-1.amazonaws.com",
            ),
            (
                "us-gov-west-1",
                "013241004608.dkr.ecr.us-gov-west-1.amazonaws.com",
            ),
            (
                "cn-north-1",
                "918309763551.dkr.ecr.cn-north-1.amazonaws.com.cn",
            ),
            (
                "cn-northwest-1",
                "961992271922.dkr.ecr.cn-northwest-1.amazonaws.com.cn",
            ),
            (
                "cn-south-9",
                "961992271922.dkr.ecr.cn-northwest-1.amazonaws.com.cn",
            ),
            (
                "us-iso-east-1",
                "725322719131.dkr.ecr.us-iso-east-1.c2s.ic.gov",
            ),
            (
                "us-isob-east-1",
                "187977181151.dkr.ecr.us-isob-east-1.sc2s.sgov.gov",
            ),
            (
                "eu-isoe-west-1",
                "249663109785.dkr.ecr.eu-isoe-west-1.amazonaws.com",
            ),
            ("us-east-1", "602401143452.dkr.ecr.us-west-2.amazonaws.com"),
        ] {
            assert_eq!(registry(region, None), want, "{region}");
        }
    }

    #[test]
    fn match_images_cover_the_nodes_registry() {
        let base = match_images("us-west-2", None);
        assert_eq!(base.len(), 5);
        let eusc = match_images("eusc-de-east-1", None);
        assert_eq!(
            eusc.last().map(String::as_str),
            Some("*.dkr.ecr.*.amazonaws.eu")
        );
    }
}
