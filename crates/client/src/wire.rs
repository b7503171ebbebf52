//! The client's side of the wire format: sending one request frame, and unpacking what the
//! server sent (batches flattened, frames of a newer server skipped, acks' `data` decoded).

use futures_util::SinkExt as _;
use herald_protocol::{ClientFrame, ClientRequest, ServerMessage};
use serde_json::{Value, value::RawValue};
use tokio_tungstenite::tungstenite::Message;

use crate::{dial::Socket, error::ClientError, link::Ended};

/// Sends one request; a failed write ends the connection.
pub(crate) async fn send(
    socket: &mut Socket,
    request: ClientRequest,
    message_id: Option<String>,
) -> Result<(), Ended> {
    let mut frame = ClientFrame::new(request);
    frame.message_id = message_id;
    socket
        .send(Message::text(frame.encode()))
        .await
        .map_err(|error| Ended::early(None, format!("write failed: {error}"), false))
}

/// The frames of one text message, batches unpacked in order. A frame the client cannot
/// decode (a newer server's type) is skipped, and so is only that element of a batch.
pub(crate) fn decode_frames(text: &str) -> Vec<ServerMessage> {
    match ServerMessage::decode(text) {
        Ok(ServerMessage::Batch { data }) => data,
        Ok(frame) => vec![frame],
        Err(_) => {
            #[derive(serde::Deserialize)]
            struct RawBatch {
                #[serde(rename = "type")]
                kind: String,
                data: Vec<Box<RawValue>>,
            }
            match serde_json::from_str::<RawBatch>(text) {
                Ok(batch) if batch.kind == "batch" => batch
                    .data
                    .iter()
                    .filter_map(|item| ServerMessage::decode(item.get()).ok())
                    .collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// Decodes an ack's `data`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, ClientError> {
    let text = data.to_string();
    serde_json::from_value(data).map_err(|_| ClientError::UnexpectedReply(text))
}
