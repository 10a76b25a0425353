//! The `.penni` file: a safetensors file whose metadata holds the graph as JSON, a format
//! version and a checksum. Weights are f32; a mostly-zero tensor (a pruned one) is stored as
//! `name#indices` (u32 flat positions) + `name#values`, so a compressed model is small on disk too.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Input, Model, Node, Op};
use crate::tensor::{Tensor, checked_numel};

pub const FORMAT_VERSION: u32 = 1;
const SPARSE_INDICES: &str = "#indices";
const SPARSE_VALUES: &str = "#values";
const EXTRA_PREFIX: &str = "extra/";

/// A model plus whatever a tool wants to keep beside it (a training checkpoint keeps optimizer
/// state and progress here). Extras ride in the same file so a checkpoint is one atomic write.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, Tensor>,
}

#[derive(Serialize, Deserialize)]
struct GraphJson {
    name: String,
    input: Input,
    nodes: Vec<NodeJson>,
    output: String,
}

#[derive(Serialize, Deserialize)]
struct NodeJson {
    name: String,
    op: Op,
    inputs: Vec<String>,
    output: String,
}

fn file_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| file_err(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Encodes one tensor, sparse when that is smaller (8 bytes per non-zero against 4 per entry).
fn encode(name: &str, t: &Tensor, allow_sparse: bool, out: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>) {
    let nnz = t.nnz();
    if allow_sparse && nnz * 2 < t.numel() && t.numel() <= u32::MAX as usize {
        let (idx, vals): (Vec<u32>, Vec<f32>) = t
            .data
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, v)| (i as u32, *v))
            .unzip();
        out.push((
            format!("{name}{SPARSE_INDICES}"),
            Dtype::U32,
            vec![nnz],
            idx.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        out.push((format!("{name}{SPARSE_VALUES}"), Dtype::F32, vec![nnz], f32_bytes(&vals)));
    } else {
        out.push((name.to_string(), Dtype::F32, t.shape.clone(), f32_bytes(&t.data)));
    }
}

fn checksum<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = crc32fast::Hasher::new();
    for (name, data) in entries {
        h.update(name.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    format!("{:08x}", h.finalize())
}

pub fn to_bytes(model: &Model, extras: &Extras) -> Result<Vec<u8>> {
    model.validate()?;
    let graph = GraphJson {
        name: model.name.clone(),
        input: model.input.clone(),
        nodes: model
            .nodes
            .iter()
            .map(|n| NodeJson {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.clone(),
                output: n.output.clone(),
            })
            .collect(),
        output: model.output.clone(),
    };
    let mut entries = Vec::new();
    for node in &model.nodes {
        for (pname, t) in &node.params {
            encode(&format!("{}.{pname}", node.name), t, true, &mut entries);
        }
    }
    for (name, t) in &extras.tensors {
        // Extras stay dense: their shape is not implied by the graph.
        encode(&format!("{EXTRA_PREFIX}{name}"), t, false, &mut entries);
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "penni".to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("graph".to_string(), serde_json::to_string(&graph).expect("graph serialises"));
    meta.insert(
        "extra".to_string(),
        serde_json::to_string(&extras.metadata).expect("map serialises"),
    );
    meta.insert(
        "checksum".to_string(),
        checksum(entries.iter().map(|e| (e.0.as_str(), e.3.as_slice()))),
    );
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).expect("sizes match by construction"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Graph(format!("cannot serialise: {e}")))
}

pub fn save(model: &Model, path: &Path) -> Result<()> {
    save_with_extras(model, &Extras::default(), path)
}

pub fn save_with_extras(model: &Model, extras: &Extras, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes(model, extras)?)
}

pub fn load(path: &Path) -> Result<Model> {
    Ok(load_with_extras(path)?.0)
}

pub fn load_with_extras(path: &Path) -> Result<(Model, Extras)> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, path)
}

/// Parses a `.penni` file held in memory; `path` only names it in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<(Model, Extras)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(path, format!("not a valid .penni (safetensors) file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| file_err(path, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("penni") {
        return Err(file_err(
            path,
            "a safetensors file, but not a penni model (no 'format: penni' in its metadata)",
        ));
    }
    let version: u32 = meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| file_err(path, "missing or unreadable format_version"))?;
    if version > FORMAT_VERSION {
        return Err(ModelError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let stored_sum = meta.get("checksum").ok_or_else(|| file_err(path, "missing checksum"))?;
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .map(|n| Ok((*n, st.tensor(n).map_err(|e| file_err(path, e.to_string()))?)))
        .collect::<Result<_>>()?;
    let actual = checksum(views.iter().map(|(n, v)| (*n, v.data())));
    if &actual != stored_sum {
        return Err(file_err(
            path,
            format!("checksum mismatch (stored {stored_sum}, computed {actual}): the file is corrupt"),
        ));
    }
    let views: HashMap<&str, TensorView> = views.into_iter().collect();
    let graph: GraphJson = serde_json::from_str(meta.get("graph").ok_or_else(|| file_err(path, "missing graph"))?)
        .map_err(|e| file_err(path, format!("graph description is invalid: {e}")))?;

    // A sparse tensor's dense size is declared, not stored: bound it by the file so a tiny file
    // cannot make us allocate gigabytes.
    let mut sparse_budget = bytes.len().saturating_mul(1024);
    let mut used = std::collections::HashSet::new();
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> { decode(&views, name, shape, path, &mut sparse_budget, &mut used) };
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for n in graph.nodes {
        let mut params = BTreeMap::new();
        for (pname, shape) in n.op.param_shapes() {
            params.insert(pname.to_string(), take(&format!("{}.{pname}", n.name), &shape)?);
        }
        nodes.push(Node {
            name: n.name,
            op: n.op,
            inputs: n.inputs,
            output: n.output,
            params,
        });
    }
    let mut extras = Extras {
        metadata: match meta.get("extra") {
            Some(s) => serde_json::from_str(s).map_err(|e| file_err(path, format!("extra metadata is invalid: {e}")))?,
            None => BTreeMap::new(),
        },
        tensors: BTreeMap::new(),
    };
    let extra_names: Vec<String> = views
        .keys()
        .filter(|k| k.starts_with(EXTRA_PREFIX))
        .map(|k| k.to_string())
        .collect();
    for full in extra_names {
        let shape = views[full.as_str()].shape().to_vec();
        let t = take(&full, &shape)?;
        extras.tensors.insert(full[EXTRA_PREFIX.len()..].to_string(), t);
    }
    if let Some(stray) = views.keys().find(|k| !used.contains(**k)) {
        return Err(file_err(path, format!("tensor '{stray}' belongs to no node of the graph")));
    }
    let model = Model {
        name: graph.name,
        input: graph.input,
        nodes,
        output: graph.output,
    };
    model.validate().map_err(|e| file_err(path, e.to_string()))?;
    Ok((model, extras))
}

fn decode(
    views: &HashMap<&str, TensorView>,
    name: &str,
    shape: &[usize],
    path: &Path,
    sparse_budget: &mut usize,
    used: &mut std::collections::HashSet<String>,
) -> Result<Tensor> {
    let numel = checked_numel(shape).ok_or_else(|| file_err(path, format!("tensor '{name}': shape {shape:?} overflows")))?;
    if let Some(v) = views.get(name) {
        if v.dtype() != Dtype::F32 {
            return Err(file_err(path, format!("tensor '{name}' is {:?}, expected F32", v.dtype())));
        }
        if v.shape() != shape {
            return Err(file_err(
                path,
                format!("tensor '{name}' has shape {:?}, the graph needs {shape:?}", v.shape()),
            ));
        }
        used.insert(name.to_string());
        return Ok(Tensor {
            shape: shape.to_vec(),
            data: read_f32(v.data()),
        });
    }
    let iname = format!("{name}{SPARSE_INDICES}");
    let vname = format!("{name}{SPARSE_VALUES}");
    let (Some(iv), Some(vv)) = (views.get(iname.as_str()), views.get(vname.as_str())) else {
        return Err(file_err(path, format!("tensor '{name}' is missing")));
    };
    if iv.dtype() != Dtype::U32 || vv.dtype() != Dtype::F32 || iv.shape() != vv.shape() || iv.shape().len() != 1 {
        return Err(file_err(
            path,
            format!("sparse tensor '{name}': indices must be U32 and values F32, both 1-D of one length"),
        ));
    }
    if numel > *sparse_budget || numel > u32::MAX as usize {
        return Err(file_err(
            path,
            format!("sparse tensor '{name}' declares {numel} values, more than a file of this size can describe"),
        ));
    }
    *sparse_budget -= numel;
    let mut data = vec![0.0f32; numel];
    let mut last: Option<u32> = None;
    for (i, v) in iv.data().chunks_exact(4).zip(read_f32(vv.data())) {
        let i = u32::from_le_bytes(i.try_into().expect("chunk of 4"));
        if i as usize >= numel || last.is_some_and(|l| i <= l) {
            return Err(file_err(
                path,
                format!("sparse tensor '{name}': index {i} out of range or out of order"),
            ));
        }
        last = Some(i);
        data[i as usize] = v;
    }
    used.insert(iname);
    used.insert(vname);
    Ok(Tensor {
        shape: shape.to_vec(),
        data,
    })
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4")))
        .collect()
}
