//! The OpenAPI 3.1 document of the API, assembled from the routes themselves: each handler's
//! `#[utoipa::path]` gives its method, path, parameters, bodies and answers; the guard it was
//! added with gives its security and the answers every guarded route can give.

use utoipa::ToSchema;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder,
};

use crate::auth::Guard;

/// The error body every refusal carries.
#[derive(ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` to match on, a `message` for people, and the `field` at
/// fault when there is one.
#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `invalid_body`, `not_found`, `conflict`, …
    pub code: String,
    pub message: String,
    /// The request field, parameter or header at fault.
    pub field: Option<String>,
}

/// An answer of `Error` with `description`.
pub fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
        .into()
}

/// Marks `op` with what `guard` requires: the bearer scheme and, for a permission, which; and
/// the answers every guarded route can give.
pub(crate) fn guard_operation(op: &mut Operation, guard: Guard) {
    let requires = match guard {
        Guard::Public => "No key needed.".to_owned(),
        Guard::AnyKey => "Needs any valid API key.".to_owned(),
        Guard::Key(p) => format!("Needs an API key whose role has `{p}`."),
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{requires}"),
        _ => requires,
    });
    let mut add = |status: &str, description: &str| {
        if !op.responses.responses.contains_key(status) {
            op.responses
                .responses
                .insert(status.to_owned(), error_response(description));
        }
    };
    add(
        "429",
        "Too many requests from this client or key; retry later.",
    );
    if guard != Guard::Public {
        op.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        add(
            "401",
            "No API key, a malformed `Authorization` header, or a key that is not valid.",
        );
    }
    if matches!(guard, Guard::Key(_)) {
        add(
            "403",
            "The key's role lacks the permission this route needs.",
        );
    }
}

/// The whole document: `paths` and `schemas` from every route, the bearer scheme, the error body.
pub(crate) fn document(
    paths: utoipa::openapi::path::Paths,
    schemas: Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>,
) -> OpenApi {
    let mut components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `Authorization: Bearer kairos_…`"))
                    .build(),
            ),
        )
        .schema_from::<ErrorBody>()
        .schema_from::<ErrorDetail>()
        .build();
    components.schemas.extend(schemas);
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Kairos")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The control plane beside an AI-agent platform: CloudEvents in, budgets, \
                     audit, access and the other projections out.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}
