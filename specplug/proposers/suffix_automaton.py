"""The ``suffix`` proposer's per-request index: a suffix automaton of one row's tokens (prompt and
output), built online as tokens arrive, with occurrence counts.

A state stands for a set of substrings that end at the same positions; ``count[v]`` is how many
positions that is, kept only for states holding a string of at most ``bound`` tokens (the longest
match plus the longest draft): each new token adds one to the states on the suffix-link chain from the
row's last ``bound`` tokens, at most ``bound`` states, so appending costs O(bound) whatever the row's
length. A string ending at two or more positions also occurs earlier in the row: that is a match.
"""

from __future__ import annotations


class SuffixAutomaton:
    def __init__(self, bound: int):
        self.bound = bound
        self.length = [0]  # longest string of each state
        self.link = [-1]  # suffix link
        self.next: list[dict[int, int]] = [{}]
        self.count = [0]
        self.last = 0  # the state of the whole row
        self.top, self.top_len = 0, 0  # the state of the row's last min(n, bound) tokens, and that length

    def _new_state(self, length: int, count: int, link: int, edges: dict[int, int]) -> int:
        self.length.append(length)
        self.count.append(count)
        self.link.append(link)
        self.next.append(edges)
        return len(self.length) - 1

    def extend(self, token: int) -> None:
        """Append one token (the standard online construction), then count its end position."""
        length, link, nxt = self.length, self.link, self.next
        cur = self._new_state(length[self.last] + 1, 0, 0, {})
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = self._new_state(length[p] + 1, self.count[q], link[q], dict(nxt[q]))
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        self._count(token)

    def _count(self, token: int) -> None:
        top, top_len, length, link = self.top, self.top_len, self.length, self.link
        while top and top_len <= length[link[top]]:  # a clone took over the shorter strings of ``top``
            top = link[top]
        top, top_len = self.next[top][token], top_len + 1
        if top_len > self.bound:
            top_len = self.bound
            if length[link[top]] >= top_len:
                top = link[top]
        self.top, self.top_len = top, top_len
        v = top
        while v > 0:
            self.count[v] += 1
            v = link[v]

    def longest_match(self, max_len: int) -> tuple[int, int]:
        """The longest suffix of the row (at most ``max_len`` tokens) that also ends earlier in the
        row: (its state, its length); (0, 0) when there is none."""
        v, top_len = self.top, self.top_len
        while v > 0:
            if self.count[v] >= 2 and self.length[self.link[v]] < max_len:
                return v, min(top_len, max_len)
            v = self.link[v]
            top_len = self.length[v]
        return 0, 0

    def continuation(self, state: int, max_tokens: int, min_prob: float) -> tuple[list[int], list[float]]:
        """Follow the most frequent next token from ``state`` while the probability of the whole path
        stays >= ``min_prob``; return the tokens and, per token, (its count, the count of all next tokens)."""
        tokens: list[int] = []
        counts: list[tuple[int, int]] = []
        prob, count = 1.0, self.count
        while len(tokens) < max_tokens:
            total, best, best_count, best_token = 0, 0, 0, 0
            for token, target in self.next[state].items():
                c = count[target]
                total += c
                if c >= best_count:  # ties: the later-added continuation
                    best, best_count, best_token = target, c, token
            if total == 0 or prob * best_count / total < min_prob:
                break
            prob *= best_count / total
            tokens.append(best_token)
            counts.append((best_count, total))
            state = best
        return tokens, counts
