//! Unified-diff hunks, as `diff -u` prints them, from the `similar` crate (Myers' diff).
//! `flotilla diff` compares two renders of one object.

use similar::TextDiff;

/// `old` and `new` as a unified diff with `context` lines around each change, under
/// `--- old_label` / `+++ new_label`; `None` when they are equal.
pub fn unified(
    old: &str,
    new: &str,
    old_label: &str,
    new_label: &str,
    context: usize,
) -> Option<String> {
    if old == new {
        return None;
    }
    let diff = TextDiff::from_lines(old, new);
    let mut out = diff
        .unified_diff()
        .context_radius(context)
        // Renders always end with a newline; the marker would only be noise.
        .missing_newline_hint(false)
        .header(old_label, new_label)
        .to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunks_carry_context_and_merge_when_close() {
        let old: String = (1..=20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l3\n", "L3\n").replace("l17\n", "");
        assert_eq!(
            unified(&old, &new, "a", "b", 2).unwrap(),
            "--- a\n+++ b\n\
             @@ -1,5 +1,5 @@\n l1\n l2\n-l3\n+L3\n l4\n l5\n\
             @@ -15,5 +15,4 @@\n l15\n l16\n-l17\n l18\n l19\n"
        );
        // Changes within two contexts of each other share one hunk.
        let close = old.replace("l3\n", "L3\n").replace("l7\n", "L7\n");
        assert_eq!(
            unified(&old, &close, "a", "b", 2).unwrap(),
            "--- a\n+++ b\n\
             @@ -1,9 +1,9 @@\n l1\n l2\n-l3\n+L3\n l4\n l5\n l6\n-l7\n+L7\n l8\n l9\n"
        );
        assert_eq!(
            unified("x\n", "y\n", "a", "b", 3).unwrap(),
            "--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n"
        );
        assert_eq!(
            unified("", "y\n", "a", "b", 3).unwrap(),
            "--- a\n+++ b\n@@ -0,0 +1 @@\n+y\n"
        );
        assert_eq!(
            unified("y\n", "", "a", "b", 3).unwrap(),
            "--- a\n+++ b\n@@ -1 +0,0 @@\n-y\n"
        );
        assert_eq!(unified("same\n", "same\n", "a", "b", 3), None);
    }

    #[test]
    fn edits_are_minimal_and_keep_order() {
        // The classic example: 5 edits are the minimum (the longest common subsequence has 4
        // lines), and applying the hunk turns one side into the other.
        let a = "a\nb\nc\na\nb\nb\na\n";
        let b = "c\nb\na\nb\na\nc\n";
        let d = unified(a, b, "a", "b", 0).unwrap();
        let body: Vec<&str> = d.lines().filter(|l| !l.starts_with("@@")).skip(2).collect();
        assert_eq!(body.iter().filter(|l| l.starts_with('-')).count(), 3, "{d}");
        assert_eq!(body.iter().filter(|l| l.starts_with('+')).count(), 2, "{d}");
        // With full context the hunk holds both sides, in order.
        let full = unified(a, b, "a", "b", 100).unwrap();
        let side = |skip: char| -> String {
            full.lines()
                .skip(3)
                .filter(|l| !l.starts_with(skip))
                .map(|l| format!("{}\n", &l[1..]))
                .collect()
        };
        assert_eq!(side('+'), a);
        assert_eq!(side('-'), b);
    }
}
