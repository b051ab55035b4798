"""The ``suffix`` proposer's global cache: a path-compressed suffix tree of bounded depth over whole
token sequences (outputs of finished requests), with occurrence counts, evicting oldest first.

Every suffix of every cached sequence is inserted, cut to ``depth`` tokens. A node is an edge of
tokens (a slice of a cached sequence: ``seq``, ``start``, ``length``); ``count`` is how many suffixes
pass through the whole edge and ``cont`` how many go on into a child (suffixes that end inside an
edge split it, so counts are uniform along an edge). ``best`` is the child with the most suffixes,
kept up to date as they are inserted, so a draft reads one child per token. A sequence adds at most
two nodes per suffix; text already cached adds none.

Each edge points at the most recent sequence that walked it. Sequences leave in the order they came
(``remove_oldest``), so an edge still in use after a removal points at a sequence still cached.

Nodes are ids into flat integer arrays and the edges one dict of ints, not Python objects: the
garbage collector has nothing to walk (objects per node made a full collection take seconds at
10^6 cached tokens).
"""

from __future__ import annotations

from array import array
from collections import deque

ROOT, NONE = 0, -1


def common_prefix(a: array, ai: int, b: array, bi: int, n: int) -> int:
    """How many of the ``n`` tokens from ``a[ai]`` and ``b[bi]`` agree (the first is known to)."""
    if a[ai : ai + n] == b[bi : bi + n]:
        return n
    j = 1
    while a[ai + j] == b[bi + j]:
        j += 1
    return j


class SuffixTree:
    def __init__(self, depth: int):
        self.depth = depth  # suffixes are cut to this many tokens
        # per node: count, cont (see above), seq/start/length (its edge), best child, first child and
        # next sibling (the children as a linked list, for finding a new best)
        self.count, self.cont, self.seq, self.start, self.length, self.best, self.first, self.sibling = (
            array("i", [value]) for value in (0, 0, NONE, 0, 0, NONE, NONE, NONE))
        self.edges: dict[int, int] = {}  # (node << 32 | first token of the child's edge) -> child
        self.free = array("i")  # ids of removed nodes, reused first
        self.seqs: dict[int, array] = {}
        self.order: deque[int] = deque()  # sequence keys, oldest first
        self._fields = (self.count, self.cont, self.seq, self.start, self.length, self.best, self.first, self.sibling)
        self.nodes = 1
        self._next_key = 0

    def add(self, tokens: array) -> int:
        """Insert every suffix of ``tokens`` (an ``array('i')``, kept as is); return its key."""
        key, self._next_key = self._next_key, self._next_key + 1
        self.seqs[key] = tokens
        self.order.append(key)
        n = len(tokens)
        for p in range(n):
            self._insert(key, tokens, p, min(p + self.depth, n))
        return key

    def remove_oldest(self) -> int:
        """Remove the oldest sequence; return how many tokens it held."""
        key = self.order.popleft()
        tokens = self.seqs[key]
        n = len(tokens)
        for p in range(n):
            self._erase(tokens, p, min(p + self.depth, n))
        del self.seqs[key]
        return n

    def _new_node(self, count: int, seq: int, start: int, length: int) -> int:
        self.nodes += 1
        if self.free:
            node = self.free.pop()
            self.count[node], self.cont[node], self.seq[node], self.start[node], self.length[node] = (
                count, 0, seq, start, length)
            self.best[node] = self.first[node] = self.sibling[node] = NONE
            return node
        for field, value in zip(self._fields, (count, 0, seq, start, length, NONE, NONE, NONE)):
            field.append(value)
        return len(self.count) - 1

    def _add_child(self, node: int, token: int, child: int) -> None:
        self.edges[node << 32 | token] = child
        self.sibling[child] = self.first[node]
        self.first[node] = child

    def _insert(self, key: int, s: array, i: int, end: int) -> None:
        node, count, seq, start, length = ROOT, self.count, self.seq, self.start, self.length
        while i < end:
            self.cont[node] += 1
            child = self.edges.get(node << 32 | s[i], NONE)
            if child == NONE:
                leaf = self._new_node(1, key, i, end - i)
                self._add_child(node, s[i], leaf)
                self._promote(node, leaf)
                return
            matched = common_prefix(self.seqs[seq[child]], start[child], s, i, min(length[child], end - i))
            if matched < length[child]:
                self._split(child, matched)
            count[child] += 1
            seq[child], start[child] = key, i
            self._promote(node, child)
            node, i = child, i + matched

    def _split(self, node: int, at: int) -> None:
        """Cut ``node``'s edge after ``at`` tokens: ``node`` keeps the upper part, a new only child the rest."""
        lower = self._new_node(self.count[node], self.seq[node], self.start[node] + at, self.length[node] - at)
        self.cont[lower], self.best[lower], self.first[lower] = self.cont[node], self.best[node], self.first[node]
        child = self.first[node]
        while child != NONE:  # the children move under ``lower``
            token = self.seqs[self.seq[child]][self.start[child]]
            del self.edges[node << 32 | token]
            self.edges[lower << 32 | token] = child
            child = self.sibling[child]
        self.length[node], self.cont[node], self.best[node], self.first[node] = at, self.count[node], lower, NONE
        self._add_child(node, self.seqs[self.seq[lower]][self.start[lower]], lower)

    def _promote(self, node: int, child: int) -> None:
        best = self.best[node]
        if node != ROOT and (best == NONE or self.count[child] >= self.count[best]):
            self.best[node] = child  # ties go to the child walked last (the most recent sequence)

    def _erase(self, s: array, i: int, end: int) -> None:
        node = ROOT
        while i < end:
            self.cont[node] -= 1
            child = self.edges[node << 32 | s[i]]
            self.count[child] -= 1
            gone = self.count[child] == 0
            if gone:
                self._unlink(node, s[i], child)
            if node != ROOT and self.best[node] == child:
                self.best[node] = self._most_used_child(node)
            if gone:
                return
            node, i = child, i + self.length[child]

    def _unlink(self, node: int, token: int, child: int) -> None:
        """Detach ``child`` from ``node`` and free it with what hangs below it (one suffix's path)."""
        del self.edges[node << 32 | token]
        if self.first[node] == child:
            self.first[node] = self.sibling[child]
        else:
            before = self.first[node]
            while self.sibling[before] != child:
                before = self.sibling[before]
            self.sibling[before] = self.sibling[child]
        while child != NONE:
            below = self.first[child]
            if below != NONE:
                del self.edges[child << 32 | self.seqs[self.seq[below]][self.start[below]]]
            self.free.append(child)
            self.nodes -= 1
            child = below

    def _most_used_child(self, node: int) -> int:
        best, child = NONE, self.first[node]
        while child != NONE:
            if best == NONE or self.count[child] > self.count[best]:
                best = child
            child = self.sibling[child]
        return best

    def locate(self, pattern: array, start: int) -> tuple[int, int] | None:
        """Where ``pattern[start:]`` ends in the tree: (node, tokens of its edge matched), or None."""
        node, i, n = ROOT, start, len(pattern)
        while i < n:
            child = self.edges.get(node << 32 | pattern[i], NONE)
            if child == NONE:
                return None
            m, first = min(self.length[child], n - i), self.start[child]
            if self.seqs[self.seq[child]][first : first + m] != pattern[i : i + m]:
                return None
            if m < self.length[child]:
                return child, m
            node, i = child, i + m
        return node, self.length[node]

    def longest_match(self, pattern: array) -> tuple[int, tuple[int, int] | None]:
        """The longest suffix of ``pattern`` found in the tree (binary search: a suffix of a found
        string is found too): its length and place."""
        lo, hi, place = 0, len(pattern), None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            found = self.locate(pattern, len(pattern) - mid)
            if found is None:
                hi = mid - 1
            else:
                lo, place = mid, found
        return lo, place

    def continuation(self, place: tuple[int, int], max_tokens: int, min_prob: float
                     ) -> tuple[list[int], list[tuple[int, int]]]:
        """Follow the most frequent continuation from ``place`` (not the root) while the probability of
        the whole path stays >= ``min_prob``; return the tokens and, per token, (the suffixes that went on
        that way, the suffixes that went on at all)."""
        node, offset = place
        tokens: list[int] = []
        counts: list[tuple[int, int]] = []
        prob = 1.0
        while len(tokens) < max_tokens:
            if offset < self.length[node]:  # inside an edge: every occurrence goes on the same way
                tokens.append(self.seqs[self.seq[node]][self.start[node] + offset])
                counts.append((self.count[node], self.count[node]))
                offset += 1
            else:
                child, cont = self.best[node], self.cont[node]
                if child == NONE or cont <= 0 or prob * self.count[child] / cont < min_prob:
                    break
                prob *= self.count[child] / cont
                tokens.append(self.seqs[self.seq[child]][self.start[child]])
                counts.append((self.count[child], cont))
                node, offset = child, 1
        return tokens, counts


class GlobalCache:
    """Whole sequences in a ``SuffixTree``, within ``max_tokens`` and ``max_requests`` (None: no
    request limit); the oldest leave first."""

    def __init__(self, depth: int, max_tokens: int, max_requests: int | None):
        self.tree = SuffixTree(depth)
        self.max_tokens, self.max_requests = max_tokens, max_requests
        self.num_tokens = 0

    @property
    def num_requests(self) -> int:
        return len(self.tree.order)

    def add(self, tokens: array) -> None:
        if not tokens or len(tokens) > self.max_tokens:
            return  # longer than the whole cache: not kept
        while self.tree.order and (self.num_tokens + len(tokens) > self.max_tokens or (
                self.max_requests is not None and self.num_requests >= self.max_requests)):
            self.num_tokens -= self.tree.remove_oldest()
        self.tree.add(tokens)
        self.num_tokens += len(tokens)

    def draft(self, pattern: array, limit, min_prob: float) -> tuple[list[int], list[tuple[int, int]]]:
        """(tokens, their counts: see ``SuffixTree.continuation``) from the longest match of
        ``pattern``'s suffix; ``limit(match_len)`` is how many tokens that match may draft."""
        if not self.tree.order:
            return [], []
        match_len, place = self.tree.longest_match(pattern)
        if match_len == 0 or place is None:
            return [], []
        return self.tree.continuation(place, limit(match_len), min_prob)
