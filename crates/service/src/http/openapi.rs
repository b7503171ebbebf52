//! docs/openapi.yaml against the route table: every route of [`ROUTES`] is documented with its
//! method, nothing documented is unserved, and the document asks for the API key exactly where
//! the server does.

use std::ptr;

use http::Method;
use yaml_rust2::{Yaml, YamlLoader};

use super::{ROUTES, keyed, routes};
use crate::app::Role;

/// The document, read at compile time so the test runs from anywhere.
const DOCUMENT: &str = include_str!("../../../../docs/openapi.yaml");

/// The methods an OpenAPI path item may hold operations for.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One documented operation.
#[derive(Debug)]
struct Operation {
    method: Method,
    /// The path template, `{name}` segments included.
    path: String,
    /// Whether it names a security requirement.
    secured: bool,
}

/// Every operation of the document, in document order.
fn documented() -> Vec<Operation> {
    let docs = YamlLoader::load_from_str(DOCUMENT)
        .unwrap_or_else(|e| panic!("docs/openapi.yaml is not YAML: {e}"));
    let [doc] = docs.as_slice() else {
        panic!("docs/openapi.yaml holds {} documents, not one", docs.len());
    };
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let paths = doc["paths"]
        .as_hash()
        .unwrap_or_else(|| panic!("docs/openapi.yaml has no `paths`"));
    let mut operations = Vec::new();
    for (path, item) in paths {
        let path = path
            .as_str()
            .unwrap_or_else(|| panic!("a path that is not a string: {path:?}"));
        let item = item
            .as_hash()
            .unwrap_or_else(|| panic!("{path} is not a mapping"));
        for (key, operation) in item {
            let Some(method) = key.as_str().filter(|key| METHODS.contains(key)) else {
                continue;
            };
            let secured = match &operation["security"] {
                Yaml::Array(requirements) => !requirements.is_empty(),
                _ => false,
            };
            operations.push(Operation {
                method: method
                    .to_ascii_uppercase()
                    .parse()
                    .unwrap_or_else(|e| panic!("{method}: {e}")),
                path: path.to_owned(),
                secured,
            });
        }
    }
    operations
}

/// A path that the template matches: each `{name}` segment filled with a sample value.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                "sample"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_is_documented_and_every_documented_route_is_served() {
    let mut documented_by: Vec<Option<String>> = vec![None; ROUTES.len()];
    for operation in documented() {
        let name = format!("{} {}", operation.method, operation.path);
        let path = sample_path(&operation.path);
        let Some((route, _)) = routes::find(ROUTES, Role::All, &operation.method, &path) else {
            panic!("docs/openapi.yaml documents {name}, which Herald does not serve");
        };
        let index = ROUTES
            .iter()
            .position(|r| ptr::eq(r, route))
            .unwrap_or_else(|| panic!("find returned a route outside the table"));
        if let Some(earlier) = documented_by[index].replace(name.clone()) {
            panic!("{earlier} and {name} are documented for the same route");
        }
    }
    for (index, documented) in documented_by.iter().enumerate() {
        assert!(
            documented.is_some(),
            "route {index} of ROUTES (crates/service/src/http/mod.rs, counting from 0) is not in \
             docs/openapi.yaml"
        );
    }
}

#[test]
fn the_document_asks_for_the_api_key_where_the_server_does() {
    for operation in documented() {
        assert_eq!(
            operation.secured,
            keyed(&operation.path),
            "{} {}: security in docs/openapi.yaml",
            operation.method,
            operation.path
        );
    }
}

#[test]
fn templates_are_filled_segment_by_segment() {
    assert_eq!(
        sample_path("/api/topics/{topic}/history"),
        "/api/topics/sample/history"
    );
    assert_eq!(sample_path("/health"), "/health");
}
