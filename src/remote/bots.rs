//! The Remote Workers API (`google.devtools.remoteworkers.v1test2`, "Bots") that REAPI servers such as
//! BuildGrid lease work to workers through. `bazel-remote-apis` ships only REAPI itself, so the few
//! messages a worker needs are declared here with prost's derive, field numbers as in `bots.proto` and
//! `worker.proto`, and the two calls go through tonic's generic client: no protoc, no build script.

use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bazel_remote_apis::google::rpc::Status;
use tonic::codegen::http::uri::PathAndQuery;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BotSession {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub bot_id: String,
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<Timestamp>,
    #[prost(string, tag = "7")]
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
// prost's derive gives the messages public accessors returning this enum.
#[allow(unnameable_types)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
// prost's derive gives the messages public accessors returning this enum.
#[allow(unnameable_types)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Lease {
    #[prost(string, tag = "7")]
    pub id: String,
    /// What to run: an REAPI `Action`, or the `Digest` of one.
    #[prost(message, optional, tag = "8")]
    pub payload: Option<Any>,
    /// The outcome: an REAPI `ActionResult`.
    #[prost(message, optional, tag = "9")]
    pub result: Option<Any>,
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "4")]
    pub requirements: Option<Worker>,
    #[prost(message, optional, tag = "5")]
    pub expire_time: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
    /// Settings of the bot, such as `capacity` (how many leases it runs at once, in BuildGrid).
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<Config>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Config {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CreateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct UpdateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

/// A client of the Bots service.
#[derive(Clone)]
pub(crate) struct BotsClient {
    grpc: tonic::client::Grpc<super::connect::Transport>,
}

impl BotsClient {
    pub(crate) fn new(channel: super::connect::Transport) -> BotsClient {
        BotsClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    async fn unary<Q, R>(
        &mut self,
        method: &'static str,
        req: tonic::Request<Q>,
    ) -> Result<R, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("service not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        let path = PathAndQuery::from_static(method);
        Ok(self.grpc.unary(req, path, codec).await?.into_inner())
    }

    pub(crate) async fn create_bot_session(
        &mut self,
        req: tonic::Request<CreateBotSessionRequest>,
    ) -> Result<BotSession, tonic::Status> {
        self.unary(
            "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession",
            req,
        )
        .await
    }

    pub(crate) async fn update_bot_session(
        &mut self,
        req: tonic::Request<UpdateBotSessionRequest>,
    ) -> Result<BotSession, tonic::Status> {
        self.unary(
            "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession",
            req,
        )
        .await
    }
}
