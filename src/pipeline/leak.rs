//! The error `kiln build` gives when the export guard finds a secret in an image: which secret, where,
//! and the step (or the FROM) that put it there.

use crate::diag::Diagnostic;
use crate::graph::Dag;

/// Names where the export guard found a secret: the file and the step that wrote it, or the config.
/// Where the config entry at `path` (`history[3].created_by`, `config.Labels.x`) comes from: the step
/// whose history entry it is, else the FROM of the image (settings such as LABEL and ENV have no node
/// of their own).
fn config_location(
    graph: &Dag,
    root: petgraph::stable_graph::NodeIndex,
    config: &serde_json::Value,
    path: &str,
) -> Option<(crate::diag::Located, &'static str)> {
    let crate::graph::Op::Config(op) = &graph.dag[root].op else {
        return None;
    };
    // The stage's own steps, top first, down to the node it starts from.
    let mut steps = Vec::new();
    let mut at = graph.inputs(root).first().copied();
    let own = op.history.iter().filter(|h| h.layer).count();
    while let Some(n) = at.filter(|n| graph.dag[*n].op.makes_layer() && steps.len() < own) {
        steps.push(n);
        at = graph.inputs(n).first().copied();
    }
    let from = at.and_then(|n| graph.dag[n].at.clone());
    let entry = path
        .strip_prefix("history[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse::<usize>().ok());
    let total = config["history"].as_array().map_or(0, Vec::len);
    let own_entry = entry.and_then(|i| i.checked_sub(total.checked_sub(op.history.len())?));
    if let Some(j) = own_entry.filter(|j| op.history.get(*j).is_some_and(|h| h.layer)) {
        let k = op.history[..j].iter().filter(|h| h.layer).count();
        let step = steps.len().checked_sub(k + 1).map(|i| steps[i]);
        if let Some(located) = step.and_then(|n| graph.dag[n].at.clone()) {
            return Some((
                located,
                "this step's history entry holds it (a build arg it uses)",
            ));
        }
    }
    from.map(|f| {
        (
            f,
            "the config of the image built from here holds it (an ARG in ENV, LABEL, WORKDIR, ...)",
        )
    })
}

pub(super) fn leak_error(
    graph: &Dag,
    summary: &crate::solve::Summary,
    root: petgraph::stable_graph::NodeIndex,
    config: &serde_json::Value,
    found: crate::export::Found,
) -> Diagnostic {
    let help = "a secret must only ever be mounted (`RUN --mount=type=secret`); never COPY it, pass it as a build arg or write it to a file";
    match found {
        crate::export::Found::Config { leak, at } => {
            let mut d = Diagnostic::build(format!(
                "secret `{}` is in the image config or history at `{at}` ({}); nothing was exported, and nothing this build made was kept",
                leak.id,
                leak.encoding.as_str()
            ))
            .help(help);
            if let Some((located, label)) = config_location(graph, root, config, &at) {
                d = d.label(located, label);
            }
            d
        }
        crate::export::Found::Layer {
            leak,
            snapshot,
            path,
        } => {
            let step = summary.outputs.iter().find_map(|(n, o)| match o {
                crate::solve::Output::Fs(rec)
                    if graph.dag[*n].op.makes_layer() && rec.layers.last() == Some(&snapshot) =>
                {
                    Some(&graph.dag[*n])
                }
                _ => None,
            });
            let mut d = Diagnostic::build(format!(
                "secret `{}` is in the image ({}) at /{}; nothing was exported, and nothing this build made was kept",
                leak.id,
                leak.encoding.as_str(),
                path.display()
            ))
            .help(help);
            if let Some(at) = step.and_then(|s| s.at.clone()) {
                d = d.label(at, "this step put it there");
            }
            d
        }
    }
}
