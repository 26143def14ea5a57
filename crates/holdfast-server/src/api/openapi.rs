//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations and
//! the wire types themselves (utoipa), so it says what the code does. The calls the router
//! builds from tables (pause and resume, the dashboard's files) are described from the same
//! tables. A test checks the document against the routes the router serves, both ways.

use std::sync::OnceLock;

use axum::Json;
use axum::http::Method;
use axum::routing::get;
use serde_json::Value;
use utoipa::Number;
use utoipa::OpenApi;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::schema::{KnownFormat, Schema, SchemaFormat};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};

use super::routes::Routes;
use super::{dashboard, events, ops, pay, queue, sales, shopper, terminals};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Holdfast",
        description = "Scarce stock sold exactly, at the announced minute, within each person's \
            limit; tills that keep selling through an outage. Money is an integer in minor units; \
            times are RFC 3339 UTC. Every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        sales::create_sale, sales::get_sale, sales::restock, sales::close, sales::release_share,
        sales::list_orders, sales::issue_customer_token,
        shopper::place_hold, shopper::confirm_hold, shopper::purchase, shopper::release_hold,
        shopper::get_hold, shopper::get_order,
        queue::join, queue::poll, queue::published_draw,
        terminals::register, terminals::rotate_secret, terminals::allotments, terminals::sync,
        terminals::card_payment, terminals::set_store_limits, terminals::quarantine,
        terminals::view, terminals::own_view, terminals::set_catalogue, terminals::get_catalogue,
        pay::page, pay::pay, ops::health, ops::metrics, events::events,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Credentials, &FromTables, &Ranges),
    tags(
        (name = "operator", description = "The seller: sales, tokens, tills, the live feed"),
        (name = "shopper", description = "Waiting room, holds, payment, orders"),
        (name = "terminal", description = "Shop tills, signing every request"),
        (name = "public", description = "Anyone: the published draw, pay links, the dashboard"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi)
}

pub fn routes() -> Routes {
    Routes::default().add(
        "/openapi.json",
        &[Method::GET],
        get(|| async { Json(document()) }),
    )
}

/// How each kind of caller proves who it is.
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            "operator",
            bearer("The operator token (HOLDFAST_OPERATOR_TOKEN, or the one serve generated)"),
        );
        components.add_security_scheme(
            "customer",
            bearer("A customer token from POST /v1/customer-tokens"),
        );
        components.add_security_scheme(
            "terminal",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Terminal <id>:<signed at ms>:<nonce>:<HMAC-SHA256 over method, path, time, \
                 nonce and body>`, accepted once within five minutes",
            ))),
        );
    }
}

/// The ranges the core enforces (`SaleSpec::validate` and the wire checks), written into the
/// request schemas from the same constants, so generated requests are mostly valid ones and
/// the document cannot promise more or less than the server takes.
struct Ranges;

impl utoipa::Modify for Ranges {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use holdfast_core::{
            ADMISSION_PER_S_MAX, HOLD_TTL_MILLIS_MAX, PASS_TTL_MILLIS_RANGE,
            PER_CUSTOMER_LIMIT_MAX, STOCK_MAX,
        };
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let mut set = |schema: &str,
                       field: &str,
                       edit: &dyn Fn(&mut utoipa::openapi::schema::Object)| {
            let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) else {
                return;
            };
            if let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field) {
                edit(property);
            }
        };
        let range = |min: u64, max: u64| {
            move |p: &mut utoipa::openapi::schema::Object| {
                p.minimum = Some(Number::UInt(min as usize));
                p.maximum = Some(Number::UInt(max as usize));
            }
        };
        let ms_to_s = |ms: u64| ms / 1000;
        set("CreateSale", "stock", &range(0, u64::from(STOCK_MAX)));
        set(
            "CreateSale",
            "per_customer_limit",
            &range(1, u64::from(PER_CUSTOMER_LIMIT_MAX)),
        );
        set("CreateSale", "price", &range(0, i64::MAX as u64));
        set(
            "CreateSale",
            "hold_ttl_s",
            &range(1, ms_to_s(HOLD_TTL_MILLIS_MAX)),
        );
        set(
            "CreateSale",
            "admission_per_s",
            &range(1, u64::from(ADMISSION_PER_S_MAX)),
        );
        let pass = ms_to_s(*PASS_TTL_MILLIS_RANGE.start())..=ms_to_s(*PASS_TTL_MILLIS_RANGE.end());
        set(
            "CreateSale",
            "pass_ttl_s",
            &range(*pass.start(), *pass.end()),
        );
        set("CreateSale", "id", &|p| {
            p.pattern = Some("^[A-Za-z0-9_-]{1,64}$".into())
        });
        set("CreateSale", "queue", &|p| {
            p.enum_values = Some(vec![
                "none".into(),
                "fifo".into(),
                "lottery".into(),
                Value::Null,
            ]);
        });
        let format = |known: KnownFormat| {
            move |p: &mut utoipa::openapi::schema::Object| {
                p.format = Some(SchemaFormat::KnownFormat(known.clone()));
            }
        };
        set("CreateSale", "opens_at", &format(KnownFormat::DateTime));
        set("CreateSale", "closes_at", &format(KnownFormat::DateTime));
        set("DeliveryRequest", "first_day", &format(KnownFormat::Date));
        let words = |p: &mut utoipa::openapi::schema::Object| {
            p.min_length = Some(1);
            p.max_length = Some(128);
        };
        set("CreateSale", "sku", &words);
        set("CreateSale", "name", &words);
        set("CustomerTokenRequest", "customer_id", &words);
        set("CustomerTokenRequest", "phone", &|p| {
            p.pattern = Some("^[+0-9][0-9 ().-]{3,30}$".into());
        });
        set("RegisterRequest", "terminal_id", &|p| {
            p.pattern = Some("^[A-Za-z0-9_-]{1,64}$".into());
        });
        set("RegisterRequest", "store", &words);
        set(
            "RestockRequest",
            "quantity",
            &range(1, u64::from(STOCK_MAX)),
        );
        for request in ["HoldRequest", "PurchaseRequest"] {
            set(
                request,
                "quantity",
                &range(1, u64::from(PER_CUSTOMER_LIMIT_MAX)),
            );
        }
    }
}

/// The calls the router builds from tables, described from the same tables.
struct FromTables;

impl utoipa::Modify for FromTables {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let refused = || {
            ResponseBuilder::new()
                .description("refused")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, _, _, summary) in sales::PAUSES {
            let sale = ResponseBuilder::new()
                .description("the sale")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("SaleBody")))
                        .build(),
                )
                .build();
            let operation = OperationBuilder::new()
                .tag("operator")
                .summary(Some(summary))
                .parameter(
                    ParameterBuilder::new()
                        .name("id")
                        .parameter_in(ParameterIn::Path)
                        .required(utoipa::openapi::Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                )
                .security(utoipa::openapi::security::SecurityRequirement::new(
                    "operator",
                    Vec::<String>::new(),
                ))
                .response("200", sale)
                .response("default", refused())
                .build();
            openapi
                .paths
                .paths
                .insert(path.to_owned(), PathItem::new(HttpMethod::Post, operation));
        }
        for (path, content_type, _) in dashboard::ASSETS {
            let text = ObjectBuilder::new().schema_type(Type::String);
            let served = ResponseBuilder::new()
                .description("the live dashboard's page or one of its files")
                .content(
                    content_type,
                    ContentBuilder::new().schema(Some(text)).build(),
                )
                .build();
            let operation = OperationBuilder::new()
                .tag("public")
                .response("200", served)
                .build();
            openapi
                .paths
                .paths
                .insert(path.to_owned(), PathItem::new(HttpMethod::Get, operation));
        }
        let document = ResponseBuilder::new()
            .description("this document")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                    .build(),
            )
            .build();
        let operation = OperationBuilder::new()
            .tag("operations")
            .summary(Some("The OpenAPI 3.1 document"))
            .response("200", document)
            .build();
        openapi.paths.paths.insert(
            "/openapi.json".to_owned(),
            PathItem::new(HttpMethod::Get, operation),
        );
    }
}
