//! The one place where every failure becomes an HTTP answer:
//! `{"error": {"code": "<snake_case>", "message": "<for a person>"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_core::{IdentityError, Rejection, SpecError};
use holdfast_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::answer::StoredAnswer;
use crate::ledger_error::LedgerError;
use crate::payments::PaymentError;
use crate::terminals::TerminalError;
use crate::text::rejection_message;

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: clients match on it.
    pub code: String,
    /// For a person.
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// For a 401: the `WWW-Authenticate` challenge naming the scheme the call needs.
    pub challenge: Option<&'static str>,
}

/// The auth scheme a 401 names in its `WWW-Authenticate` challenge (RFC 9110 §11.6.1: every
/// 401 carries one, so a client knows what to send).
const CHALLENGE_BEARER: &str = "Bearer realm=\"holdfast\"";
const CHALLENGE_TERMINAL: &str = "Terminal realm=\"holdfast\"";

/// A message is for a person, and some quote what the caller sent (a parser's complaint, an
/// unknown name): cut there, so an answer never echoes a large input back.
const MESSAGE_CHARS_MAX: usize = 300;

fn bounded(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MESSAGE_CHARS_MAX) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: bounded(message.into()),
            retry_after_s: None,
            challenge: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A missing or refused operator or customer token.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            challenge: Some(CHALLENGE_BEARER),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// A missing or refused terminal signature.
    pub fn unauthorized_terminal(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            challenge: Some(CHALLENGE_TERMINAL),
            ..ApiError::new(StatusCode::UNAUTHORIZED, code, message)
        }
    }

    pub fn overloaded(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "too many requests right now; retry after the time given",
            )
        }
    }

    /// This error as an answer stored for replay under an idempotency key.
    pub fn stored(&self) -> StoredAnswer {
        StoredAnswer::json(self.status.as_u16(), &self.body())
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        let status = match rejection {
            Rejection::NotOpenYet { .. } | Rejection::Closed | Rejection::Paused => {
                StatusCode::FORBIDDEN
            }
            Rejection::LimitExceeded { .. } => StatusCode::FORBIDDEN,
            Rejection::SoldOut { .. } => StatusCode::CONFLICT,
            Rejection::InvalidQuantity { .. } => StatusCode::BAD_REQUEST,
            Rejection::HoldNotFound => StatusCode::NOT_FOUND,
            Rejection::HoldExpired => StatusCode::GONE,
            Rejection::HoldReleased => StatusCode::GONE,
            Rejection::HoldConfirmed
            | Rejection::ShareAlreadyReleased { .. }
            | Rejection::AllotmentExceeded { .. }
            | Rejection::NoDeliveryDay
            | Rejection::PriceMismatch { .. } => StatusCode::CONFLICT,
            Rejection::PassRequired | Rejection::PassInvalid { .. } => StatusCode::FORBIDDEN,
            Rejection::NoQueue => StatusCode::CONFLICT,
            Rejection::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, rejection.code(), rejection_message(&rejection))
    }
}

impl From<TerminalError> for ApiError {
    fn from(error: TerminalError) -> ApiError {
        match error {
            TerminalError::UnknownSale(id) => {
                ApiError::not_found("sale_not_found", format!("no sale with id '{id}'"))
            }
            TerminalError::Rejected(rejection) => rejection.into(),
            TerminalError::Ledger(error) => error.into(),
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(error: IdentityError) -> ApiError {
        match error {
            IdentityError::InvalidPhone => {
                ApiError::bad_request("invalid_phone", error.to_string())
            }
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(error: SpecError) -> ApiError {
        let status = match error {
            SpecError::PriceAboveCeiling { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> ApiError {
        match error {
            LedgerError::Busy => ApiError::overloaded(1),
            LedgerError::TooManySales => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_sales",
                "this server already holds its maximum number of sales",
            ),
            LedgerError::Moved | LedgerError::Storage(StoreError::Fenced { .. }) => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "moved",
                    "another node serves this now; nothing was changed here: send the same \
                     request again (with the same Idempotency-Key)",
                )
            },
            LedgerError::NodeUnreachable => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "node_unreachable",
                    "the node serving this did not answer, so whether it took effect is not \
                     known: send the same request again (with the same Idempotency-Key)",
                )
            },
            other => {
                tracing::error!(error = %other, "ledger unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the ledger cannot accept writes right now; nothing was changed",
                )
            }
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(error: PaymentError) -> ApiError {
        match error {
            PaymentError::Declined { .. } => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_declined",
                error.to_string(),
            ),
            PaymentError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "payment_reference_reused",
                "this payment reference was already used for a different payment",
            ),
            PaymentError::Unavailable | PaymentError::UnknownAuthorization => ApiError {
                retry_after_s: Some(5),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "payment_unavailable",
                    "the payment network did not answer; the hold is kept, try again",
                )
            },
        }
    }
}
