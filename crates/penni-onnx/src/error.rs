use std::path::PathBuf;

use penni_model::ModelError;

/// One thing in a model that penni cannot import: which node, which operator, what exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// The ONNX node name (or a generated `OpType_#index` when the node has none); empty for
    /// problems of the graph as a whole (its inputs and outputs).
    pub node: String,
    /// The ONNX operator (`Softmax`, `com.microsoft.FusedConv`), empty for graph-level issues.
    pub op: String,
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.node.is_empty() && self.op.is_empty() {
            write!(f, "graph: {}", self.message)
        } else {
            write!(f, "node '{}' ({}): {}", self.node, self.op, self.message)
        }
    }
}

fn list_issues(issues: &[Issue]) -> String {
    let mut ops: Vec<&str> = Vec::new();
    for i in issues {
        if i.message.starts_with("operator ") && !ops.contains(&i.op.as_str()) {
            ops.push(&i.op);
        }
    }
    let mut s = format!("{} unsupported feature(s)", issues.len());
    if !ops.is_empty() {
        s.push_str(&format!(" (unsupported operators: {})", ops.join(", ")));
    }
    s.push(':');
    for i in issues {
        s.push_str("\n  - ");
        s.push_str(&i.to_string());
    }
    s
}

/// Everything that can go wrong reading or writing ONNX. Every variant names the file (or model)
/// and, where there is one, the node and its operator, so a user can find the problem in Netron.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{name}: not a readable ONNX model (protobuf decoding failed: {message})")]
    Decode { name: String, message: String },

    #[error("{name}: ONNX IR version {found} is not supported (penni reads IR version 3 and later){}", if *.found <= 0 { "; is this an ONNX file?" } else { "" })]
    IrVersion { name: String, found: i64 },

    #[error("{name}: {message}")]
    Opset { name: String, message: String },

    #[error("{name}: malformed ONNX model: {message}")]
    Malformed { name: String, message: String },

    #[error("{name}: tensor '{tensor}': {message}")]
    Tensor { name: String, tensor: String, message: String },

    #[error("{name}: node '{node}' ({op}) reads '{input}', which no node, initializer or graph input provides")]
    DanglingInput {
        name: String,
        node: String,
        op: String,
        input: String,
    },

    #[error("{name}: the graph has a cycle through node(s) {}", .nodes.join(", "))]
    Cycle { name: String, nodes: Vec<String> },

    #[error("{name}: node '{node}' ({op}): {message}")]
    InvalidNode {
        name: String,
        node: String,
        op: String,
        message: String,
    },

    /// The model is well-formed but uses operators, attributes or graph shapes that the penni IR
    /// cannot express. Lists every one of them, not only the first.
    #[error("{name}: penni cannot import this model; {}", list_issues(.issues))]
    UnsupportedModel { name: String, issues: Vec<Issue> },

    #[error("{name}: node '{node}' ({op}): {param} contains NaN or infinite values")]
    NonFiniteWeight {
        name: String,
        node: String,
        op: String,
        param: String,
    },

    #[error("{name}: the imported graph is not a valid penni model: {source}")]
    Invalid { name: String, source: ModelError },

    #[error("cannot export model '{model}' to ONNX: {message}")]
    Export { model: String, message: String },

    #[error(transparent)]
    Model(#[from] ModelError),
}
