//! The router, built so that it knows what it serves: every route is added with its methods,
//! and the list is what the OpenAPI document is checked against (`served`).

use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;

use crate::state::AppState;

/// A router and the (method, path template) pairs it serves.
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl Routes {
    /// Serves `path` with `route`, which answers `methods`.
    pub fn add(
        mut self,
        path: &'static str,
        methods: &[Method],
        route: MethodRouter<AppState>,
    ) -> Routes {
        self.router = self.router.route(path, route);
        self.served
            .extend(methods.iter().map(|method| (method.clone(), path)));
        self
    }

    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    pub fn served(&self) -> &[(Method, &'static str)] {
        &self.served
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
