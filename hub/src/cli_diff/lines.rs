//! A line diff (Myers' O(ND) algorithm) printed as unified-diff hunks, as `diff -u` prints
//! them. Small on purpose: `flotilla diff` compares two renders of one object.

/// What happens to one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// In both.
    Equal,
    /// Only in the old text.
    Delete,
    /// Only in the new text.
    Insert,
}

/// A shortest edit script turning `a` into `b`, one entry per line, in order.
pub fn diff<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    // Common ends need no search (and usually leave little for it).
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<(Op, &str)> = a[..prefix].iter().map(|l| (Op::Equal, *l)).collect();
    out.extend(myers(mid_a, mid_b));
    out.extend(a[a.len() - suffix..].iter().map(|l| (Op::Equal, *l)));
    out
}

fn myers<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = n + m;
    let offset = max + 1;
    let idx = |k: isize| (k + offset) as usize;
    let mut v = vec![0isize; 2 * (max as usize) + 3];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    'search: for d in 0..=max {
        trace.push(v.clone());
        let mut k = -d;
        while k <= d {
            let mut x = if k == -d || (k != d && v[idx(k - 1)] < v[idx(k + 1)]) {
                v[idx(k + 1)]
            } else {
                v[idx(k - 1)] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[idx(k)] = x;
            if x >= n && y >= m {
                break 'search;
            }
            k += 2;
        }
    }
    // Walk back from the end through the recorded frontiers.
    let mut out = Vec::new();
    let (mut x, mut y) = (n, m);
    for (d, v) in trace.iter().enumerate().rev() {
        let d = d as isize;
        let k = x - y;
        let prev_k = if k == -d || (k != d && v[idx(k - 1)] < v[idx(k + 1)]) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = v[idx(prev_k)];
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            out.push((Op::Equal, a[(x - 1) as usize]));
            x -= 1;
            y -= 1;
        }
        if d > 0 {
            if x == prev_x {
                out.push((Op::Insert, b[(y - 1) as usize]));
            } else {
                out.push((Op::Delete, a[(x - 1) as usize]));
            }
        }
        x = prev_x;
        y = prev_y;
    }
    out.reverse();
    out
}

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
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = diff(&a, &b);
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op != Op::Equal)
        .map(|(i, _)| i)
        .collect();
    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    let mut i = 0;
    while i < changed.len() {
        // One hunk: changes closer than two contexts apart share it.
        let mut j = i;
        while j + 1 < changed.len() && changed[j + 1] - changed[j] <= 2 * context {
            j += 1;
        }
        let start = changed[i].saturating_sub(context);
        let end = (changed[j] + context + 1).min(ops.len());
        let count = |range: std::ops::Range<usize>, skip: Op| {
            ops[range].iter().filter(|(op, _)| *op != skip).count()
        };
        let (old_before, new_before) = (count(0..start, Op::Insert), count(0..start, Op::Delete));
        let (old_len, new_len) = (count(start..end, Op::Insert), count(start..end, Op::Delete));
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(old_before, old_len),
            range(new_before, new_len)
        ));
        for (op, line) in &ops[start..end] {
            let mark = match op {
                Op::Equal => ' ',
                Op::Delete => '-',
                Op::Insert => '+',
            };
            out.push(mark);
            out.push_str(line);
            out.push('\n');
        }
        i = j + 1;
    }
    Some(out)
}

/// A hunk range as `diff -u` writes it: `start,len`, `start` alone for one line, and the line
/// before for an empty range.
fn range(before: usize, len: usize) -> String {
    match len {
        0 => format!("{before},0"),
        1 => format!("{}", before + 1),
        _ => format!("{},{len}", before + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(a: &str, b: &str) -> String {
        let a: Vec<&str> = a.split(' ').filter(|s| !s.is_empty()).collect();
        let b: Vec<&str> = b.split(' ').filter(|s| !s.is_empty()).collect();
        diff(&a, &b)
            .iter()
            .map(|(op, l)| match op {
                Op::Equal => format!(" {l}"),
                Op::Delete => format!("-{l}"),
                Op::Insert => format!("+{l}"),
            })
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn edit_scripts_are_shortest_and_keep_order() {
        assert_eq!(script("a b c", "a b c"), " a b c");
        assert_eq!(script("", "a b"), "+a+b");
        assert_eq!(script("a b", ""), "-a-b");
        assert_eq!(script("a b c", "a x c"), " a-b+x c");
        // The classic example: 5 edits are the minimum (the longest common subsequence has 4
        // lines), and the script turns one side into the other.
        let (a, b) = ("a b c a b b a", "c b a b a c");
        let s = script(a, b);
        assert_eq!(s.matches('-').count(), 3, "{s}");
        assert_eq!(s.matches('+').count(), 2, "{s}");
        let side = |skip: char| -> String {
            let mut out = Vec::new();
            let mut chars = s.chars().peekable();
            while let Some(mark) = chars.next() {
                let line: String =
                    std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric())).collect();
                if mark != skip {
                    out.push(line);
                }
            }
            out.join(" ")
        };
        assert_eq!(side('+'), a);
        assert_eq!(side('-'), b);
    }

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
        assert_eq!(unified("same\n", "same\n", "a", "b", 3), None);
    }
}
