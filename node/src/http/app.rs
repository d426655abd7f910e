//! The meeting app at `/`: the files `npm run --prefix app build` writes (`web.app_dir`,
//! default `app/dist`), served as they are with tower-http's `ServeDir`. The app is LiveKit's
//! React components speaking LiveKit's protocol to this node's `/rtc`.
//!
//! The app is built outside cargo (npm and esbuild), so a node may start without it: then `/`
//! serves the demo page compiled into the binary (always also at `/demo.html`) and the node
//! says once how to build the app.

use super::AppState;
use axum::Router;
use axum::routing::get;
use std::path::Path;
use tower_http::services::ServeDir;

/// Routes for `/`: the built app if `dir` holds one, else the demo page.
pub fn routes(dir: &Path) -> Router<AppState> {
    if dir.join("index.html").is_file() {
        tracing::info!(dir = %dir.display(), "serving the meeting app at /");
        // Paths no other route takes are files of the app (or a 404); the build writes gzipped
        // copies, sent to browsers that accept them.
        Router::new().fallback_service(ServeDir::new(dir).precompressed_gzip())
    } else {
        tracing::warn!(
            dir = %dir.display(),
            "the meeting app is not built, / serves the demo page: build it with \
             `npm ci --prefix app && npm run --prefix app build` (./run.sh does), \
             or set web.app_dir"
        );
        Router::new().route("/", get(|| async { super::demo::index() }))
    }
}
