//! A small gRPC client for the two APIs the agent speaks over containerd's socket: containerd's
//! own Version service (the health probe) and the Kubernetes CRI (`runtime.v1`), which join uses
//! to pre-pull the pod sandbox (pause) image with ECR credentials, as nodeadm does
//! (internal/containerd/sandbox.go), which tests use to start a real pod sandbox, and which a
//! node refresh (`[lifecycle] max_node_age`) uses to garbage-collect images no container uses.
//!
//! The messages are written here with `prost` derives rather than generated from the `.proto`
//! files at build time: the generated crates (containerd-client, k8s-cri) run `protoc` in their
//! build scripts, so a fresh box could not build the agent without first installing Debian's
//! protobuf-compiler. Only the fields the agent and its tests use are declared; protobuf ignores
//! the others on decode and omits them on encode, which is exactly what the wire format allows.
//! Field numbers are those of k8s.io/cri-api `pkg/apis/runtime/v1/api.proto` and containerd's
//! `api/services/version/v1/version.proto`.

pub mod messages;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

pub use messages::*;

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed call, with the socket and the method it was for.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to containerd's socket {}: {message}", socket.display())]
    Connect { socket: PathBuf, message: String },
    #[error("{method} on {}: {message}", socket.display())]
    Call {
        socket: PathBuf,
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{method} on {} did not answer within {timeout:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        method: &'static str,
        timeout: Duration,
    },
}

impl CriError {
    /// The gRPC status code of a failed call (`Unknown` for connection problems).
    pub fn code(&self) -> tonic::Code {
        match self {
            CriError::Call { code, .. } => *code,
            CriError::Timeout { .. } => tonic::Code::DeadlineExceeded,
            CriError::Connect { .. } => tonic::Code::Unavailable,
        }
    }
}

/// A connection to containerd's socket.
#[derive(Clone)]
pub struct Client {
    socket: PathBuf,
    channel: Channel,
}

impl Client {
    /// Connects to the unix socket at `socket` (the URI below is required by tonic and unused).
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        let path = socket.to_path_buf();
        let endpoint = Endpoint::from_static("http://[::]:50051").connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| CriError::Connect {
                socket: socket.to_path_buf(),
                message: error_chain(&e),
            })?;
        Ok(Self {
            socket: socket.to_path_buf(),
            channel,
        })
    }

    /// One unary call of `method` (`/package.Service/Method`) with a deadline.
    async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        request: Req,
        timeout: Duration,
    ) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let call = async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready().await.map_err(|e| CriError::Connect {
                socket: self.socket.clone(),
                message: error_chain(&e),
            })?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(method),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Call {
                socket: self.socket.clone(),
                method,
                code: status.code(),
                message: status.message().to_owned(),
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(CriError::Timeout {
                socket: self.socket.clone(),
                method,
                timeout,
            }),
        }
    }

    /// containerd's own Version service (not CRI): "containerd <version> (<revision>)".
    pub async fn containerd_version(&self, timeout: Duration) -> Result<String, CriError> {
        let reply: ContainerdVersionResponse = self
            .unary(
                "/containerd.services.version.v1.Version/Version",
                Empty {},
                timeout,
            )
            .await?;
        Ok(format!("containerd {} ({})", reply.version, reply.revision))
    }

    /// CRI `RuntimeService/Version`.
    pub async fn version(&self, timeout: Duration) -> Result<VersionResponse, CriError> {
        self.unary(
            "/runtime.v1.RuntimeService/Version",
            VersionRequest {
                version: "v1".to_owned(),
            },
            timeout,
        )
        .await
    }

    /// CRI `ImageService/PullImage`: the image reference containerd stored.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        timeout: Duration,
    ) -> Result<String, CriError> {
        let reply: PullImageResponse = self
            .unary(
                "/runtime.v1.ImageService/PullImage",
                PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                },
                timeout,
            )
            .await?;
        Ok(reply.image_ref)
    }

    /// CRI `ImageService/ImageStatus`: the image when containerd has it.
    pub async fn image_status(
        &self,
        image: &str,
        timeout: Duration,
    ) -> Result<Option<Image>, CriError> {
        let reply: ImageStatusResponse = self
            .unary(
                "/runtime.v1.ImageService/ImageStatus",
                ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                        ..Default::default()
                    }),
                    verbose: false,
                },
                timeout,
            )
            .await?;
        Ok(reply.image)
    }

    /// CRI `ImageService/ListImages`: every image containerd's CRI namespace holds.
    pub async fn list_images(&self, timeout: Duration) -> Result<Vec<Image>, CriError> {
        let reply: ListImagesResponse = self
            .unary(
                "/runtime.v1.ImageService/ListImages",
                ListImagesRequest {},
                timeout,
            )
            .await?;
        Ok(reply.images)
    }

    /// CRI `ImageService/RemoveImage` of an image id or reference (idempotent: an image already
    /// gone is no error). containerd refuses an image a container still uses.
    pub async fn remove_image(&self, image: &str, timeout: Duration) -> Result<(), CriError> {
        let _: Empty = self
            .unary(
                "/runtime.v1.ImageService/RemoveImage",
                RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image.to_owned(),
                        ..Default::default()
                    }),
                },
                timeout,
            )
            .await?;
        Ok(())
    }

    /// CRI `RuntimeService/ListContainers`: every container, running or exited.
    pub async fn list_containers(&self, timeout: Duration) -> Result<Vec<Container>, CriError> {
        let reply: ListContainersResponse = self
            .unary(
                "/runtime.v1.RuntimeService/ListContainers",
                ListContainersRequest {},
                timeout,
            )
            .await?;
        Ok(reply.containers)
    }

    /// CRI `RuntimeService/ListPodSandbox`: every pod sandbox, ready or not.
    pub async fn list_pod_sandboxes(&self, timeout: Duration) -> Result<Vec<PodSandbox>, CriError> {
        let reply: ListPodSandboxResponse = self
            .unary(
                "/runtime.v1.RuntimeService/ListPodSandbox",
                ListPodSandboxRequest {},
                timeout,
            )
            .await?;
        Ok(reply.items)
    }

    /// CRI `RuntimeService/RunPodSandbox`: the sandbox id.
    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        timeout: Duration,
    ) -> Result<String, CriError> {
        let reply: RunPodSandboxResponse = self
            .unary(
                "/runtime.v1.RuntimeService/RunPodSandbox",
                RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                },
                timeout,
            )
            .await?;
        Ok(reply.pod_sandbox_id)
    }

    /// CRI `RuntimeService/PodSandboxStatus`.
    pub async fn pod_sandbox_status(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<PodSandboxStatus, CriError> {
        let reply: PodSandboxStatusResponse = self
            .unary(
                "/runtime.v1.RuntimeService/PodSandboxStatus",
                PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_owned(),
                    verbose: false,
                },
                timeout,
            )
            .await?;
        Ok(reply.status.unwrap_or_default())
    }

    /// CRI `RuntimeService/StopPodSandbox` (idempotent).
    pub async fn stop_pod_sandbox(&self, id: &str, timeout: Duration) -> Result<(), CriError> {
        let _: Empty = self
            .unary(
                "/runtime.v1.RuntimeService/StopPodSandbox",
                PodSandboxIdRequest {
                    pod_sandbox_id: id.to_owned(),
                },
                timeout,
            )
            .await?;
        Ok(())
    }

    /// CRI `RuntimeService/RemovePodSandbox` (idempotent).
    pub async fn remove_pod_sandbox(&self, id: &str, timeout: Duration) -> Result<(), CriError> {
        let _: Empty = self
            .unary(
                "/runtime.v1.RuntimeService/RemovePodSandbox",
                PodSandboxIdRequest {
                    pod_sandbox_id: id.to_owned(),
                },
                timeout,
            )
            .await?;
        Ok(())
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
