//! A workflow's steps drawn as a DAG: a layered layout computed here (no JavaScript), drawn as
//! SVG.
//!
//! The layout is the classic Sugiyama shape cut to what a workflow needs: each step's layer is
//! the length of the longest chain of dependencies before it (so every edge points right), and
//! the steps of a layer are ordered by the mean row of their dependencies, swept a few times
//! left to right and back (the barycenter heuristic), which untangles the fan-outs and diamonds
//! that workflows are made of. Edges are curves from a step's right side to its dependent's
//! left side.

use std::collections::{BTreeMap, HashMap};

use maud::{Markup, html};

/// One step to draw.
pub struct DagNode {
    pub id: String,
    pub depends_on: Vec<String>,
    /// A second line under the id (the step's type or topic).
    pub detail: String,
    /// Its status in a run (the CSS class `s-<status>` colours it); `None` on a definition.
    pub status: Option<String>,
    /// Where a click on it goes.
    pub href: Option<String>,
}

/// Each step's (layer, row): layers run left to right, rows top to bottom.
pub fn layout(nodes: &[DagNode]) -> BTreeMap<&str, (usize, usize)> {
    let known: HashMap<&str, &DagNode> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let deps_of = |n| known_deps(n, &known);
    // Longest path from a root, relaxed at most once per node: a definition is acyclic (its
    // validation says so), and a cycle here would only stop growing, not loop.
    let mut layer: HashMap<&str, usize> = nodes.iter().map(|n| (n.id.as_str(), 0)).collect();
    for _ in 0..nodes.len() {
        let mut changed = false;
        for n in nodes {
            let want = deps_of(n)
                .iter()
                .filter_map(|d| layer.get(d).map(|l| l + 1))
                .max()
                .unwrap_or(0)
                .min(nodes.len());
            if layer.get(n.id.as_str()).is_some_and(|l| *l < want) {
                layer.insert(n.id.as_str(), want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let depth = layer.values().copied().max().map_or(0, |m| m + 1);
    let mut layers: Vec<Vec<&str>> = vec![Vec::new(); depth];
    for n in nodes {
        if let Some(l) = layer.get(n.id.as_str()).and_then(|l| layers.get_mut(*l)) {
            l.push(n.id.as_str());
        }
    }
    // Neighbours both ways, for the sweeps.
    let mut ups: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut downs: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in nodes {
        for d in deps_of(n) {
            ups.entry(n.id.as_str()).or_default().push(d);
            downs.entry(d).or_default().push(n.id.as_str());
        }
    }
    let row_of = |layers: &[Vec<&str>]| -> HashMap<String, usize> {
        layers
            .iter()
            .flat_map(|l| l.iter().enumerate().map(|(i, id)| (id.to_string(), i)))
            .collect()
    };
    let reorder = |layer: &mut Vec<&str>,
                   neighbours: &HashMap<&str, Vec<&str>>,
                   rows: &HashMap<String, usize>| {
        let key = |id: &str, own: usize| -> f64 {
            let ns: Vec<usize> = neighbours
                .get(id)
                .map(|v| v.iter().filter_map(|n| rows.get(*n).copied()).collect())
                .unwrap_or_default();
            if ns.is_empty() {
                own as f64
            } else {
                ns.iter().sum::<usize>() as f64 / ns.len() as f64
            }
        };
        let mut keyed: Vec<(f64, usize, &str)> = layer
            .iter()
            .enumerate()
            .map(|(i, id)| (key(id, i), i, *id))
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        *layer = keyed.into_iter().map(|(_, _, id)| id).collect();
    };
    for _ in 0..4 {
        for i in 1..layers.len() {
            let rows = row_of(&layers);
            if let Some(l) = layers.get_mut(i) {
                reorder(l, &ups, &rows);
            }
        }
        for i in (0..layers.len().saturating_sub(1)).rev() {
            let rows = row_of(&layers);
            if let Some(l) = layers.get_mut(i) {
                reorder(l, &downs, &rows);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (li, l) in layers.iter().enumerate() {
        for (ri, id) in l.iter().enumerate() {
            out.insert(*id, (li, ri));
        }
    }
    out
}

/// The dependencies of `n` that are steps of the drawing (not itself).
fn known_deps<'a>(n: &'a DagNode, known: &HashMap<&str, &DagNode>) -> Vec<&'a str> {
    n.depends_on
        .iter()
        .map(String::as_str)
        .filter(|d| known.contains_key(d) && *d != n.id)
        .collect()
}

const NODE_W: usize = 170;
const NODE_H: usize = 48;
const GAP_X: usize = 70;
const GAP_Y: usize = 24;
const PAD: usize = 12;

/// The steps as an SVG picture, laid out by [`layout`].
pub fn svg(nodes: &[DagNode], label: &str) -> Markup {
    let pos = layout(nodes);
    let layers = pos.values().map(|(l, _)| l + 1).max().unwrap_or(0);
    let mut per_layer = vec![0usize; layers];
    for (l, _) in pos.values() {
        if let Some(c) = per_layer.get_mut(*l) {
            *c += 1;
        }
    }
    let tallest = per_layer.iter().copied().max().unwrap_or(0);
    let height = PAD * 2 + tallest * NODE_H + tallest.saturating_sub(1) * GAP_Y;
    let width = PAD * 2 + layers * NODE_W + layers.saturating_sub(1) * GAP_X;
    // Each layer centred vertically.
    let at = |id: &str| -> Option<(usize, usize)> {
        let (l, r) = pos.get(id)?;
        let count = per_layer.get(*l).copied().unwrap_or(1);
        let top = PAD + (tallest - count) * (NODE_H + GAP_Y) / 2;
        Some((PAD + l * (NODE_W + GAP_X), top + r * (NODE_H + GAP_Y)))
    };
    let edges: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.depends_on
                .iter()
                .map(move |d| (d.as_str(), n.id.as_str()))
        })
        .filter_map(|(from, to)| {
            let (fx, fy) = at(from)?;
            let (tx, ty) = at(to)?;
            let (x1, y1) = (fx + NODE_W, fy + NODE_H / 2);
            let (x2, y2) = (tx, ty + NODE_H / 2);
            let mid = (x1 + x2) / 2;
            Some(format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"))
        })
        .collect();
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(label)
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrow" {}
                }
            }
            @for d in &edges {
                path class="edge" d=(d) marker-end="url(#arrow)" {}
            }
            // SVG elements are closed explicitly: in HTML, `<rect>` is not a void element, and
            // one left open would swallow the rest of the drawing.
            @for n in nodes {
                @if let Some((x, y)) = at(&n.id) {
                    @let class = format!("node s-{}", n.status.as_deref().unwrap_or("none"));
                    @let body = html! {
                        g class=(class) data-step=(n.id) {
                            title { (n.id) @if let Some(s) = &n.status { " — " (s) } }
                            rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                            text x=(x + 10) y=(y + 20) class="name" { (clip(&n.id, 22)) }
                            text x=(x + 10) y=(y + 38) class="detail" {
                                (clip(&n.detail, 18))
                                @if let Some(s) = &n.status { " · " (s) }
                            }
                        }
                    };
                    @match &n.href {
                        Some(h) => a href=(h) { (body) },
                        None => (body),
                    }
                }
            }
        }
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, deps: &[&str]) -> DagNode {
        DagNode {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            detail: String::new(),
            status: None,
            href: None,
        }
    }

    #[test]
    fn each_step_sits_one_layer_right_of_its_latest_dependency() {
        let nodes = [
            node("deploy", &["review", "build"]),
            node("build", &[]),
            node("review", &["build"]),
        ];
        let pos = layout(&nodes);
        assert_eq!(pos["build"].0, 0);
        assert_eq!(pos["review"].0, 1);
        assert_eq!(
            pos["deploy"].0, 2,
            "the longest chain places it, not the shortest"
        );
    }

    #[test]
    fn fan_out_and_in_shares_layers_and_rows_are_distinct() {
        let nodes = [
            node("a", &[]),
            node("b1", &["a"]),
            node("b2", &["a"]),
            node("b3", &["a"]),
            node("c", &["b1", "b2", "b3"]),
        ];
        let pos = layout(&nodes);
        let mut rows: Vec<usize> = ["b1", "b2", "b3"].iter().map(|b| pos[b].1).collect();
        assert!(["b1", "b2", "b3"].iter().all(|b| pos[b].0 == 1));
        rows.sort();
        assert_eq!(rows, [0, 1, 2]);
        assert_eq!(pos["c"], (2, 0));
    }

    #[test]
    fn barycenter_ordering_uncrosses_parallel_chains() {
        // Two chains whose second layer is listed crossed: x2 follows y1, y2 follows x1.
        let nodes = [
            node("x1", &[]),
            node("y1", &[]),
            node("y2", &["y1"]),
            node("x2", &["x1"]),
        ];
        let pos = layout(&nodes);
        assert_eq!(pos["x1"].1 == pos["x2"].1, pos["y1"].1 == pos["y2"].1);
        assert_eq!(pos["x1"].1, pos["x2"].1, "{pos:?}");
    }

    #[test]
    fn unknown_dependencies_and_cycles_do_not_break_the_drawing() {
        let nodes = [node("a", &["ghost", "b"]), node("b", &["a"])];
        let pos = layout(&nodes);
        assert_eq!(pos.len(), 2);
        let svg = svg(&nodes, "g").into_string();
        assert!(svg.contains("data-step=\"a\"") && svg.contains("data-step=\"b\""));
    }

    #[test]
    fn the_svg_draws_one_box_per_step_and_one_curve_per_edge() {
        let mut nodes = vec![node("build", &[]), node("deploy", &["build"])];
        nodes[1].status = Some("running".into());
        nodes[1].href = Some("/ui/jobs/j1".into());
        let svg = svg(&nodes, "run").into_string();
        assert_eq!(svg.matches("<rect").count(), 2);
        // Closed explicitly, or the HTML parser nests everything after into the first.
        assert_eq!(svg.matches("</rect>").count(), 2);
        assert_eq!(svg.matches("<path").count(), svg.matches("</path>").count());
        assert_eq!(svg.matches("class=\"edge\"").count(), 1);
        assert!(svg.contains("node s-running"));
        assert!(svg.contains("href=\"/ui/jobs/j1\""));
    }
}
