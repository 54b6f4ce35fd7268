"""The worker's channel policies against the core's: the lifecycle table and the
window policy, both compared with core/tests/vectors/channel_policy.json, which
core/tests/channel_policy.rs generates from core/src/lifecycle.rs and
core/src/window.rs and checks. A change on one side only fails here or there."""
import json
import os
import sys
import unittest
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import W  # noqa: E402

POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core", "tests",
                      "vectors", "channel_policy.json")


def load():
    with open(POLICY) as f:
        return json.load(f)


def gateway(window):
    hello = {"version": 1, "window": window, "max_frame": 1 << 20, "max_item": 1 << 30,
             "options": {}}
    return W.Gateway(None, None, hello)


def grant(frame):
    """The credit a WINDOW frame returns (0 for None)."""
    if frame is None:
        return 0
    assert frame[0] == W.WINDOW, frame
    return W.loads(bytes(frame[9:]))


class LifecycleTable(unittest.TestCase):
    def test_the_literal_table_is_the_cores(self):
        life = load()["lifecycle"]
        events = life["events"]
        self.assertEqual(sorted(W._LIFE_EVENTS, key=W._LIFE_EVENTS.get), events)
        self.assertEqual(sorted(W._LIFECYCLE), sorted(life["table"]))
        for state, row in life["table"].items():
            mine = W._LIFECYCLE[state]
            self.assertEqual(len(mine), len(events), state)
            for event in events:
                self.assertEqual(mine[W._LIFE_EVENTS[event]], row[event],
                                 "%s on %s" % (event, state))
        self.assertEqual(W.Channel._st, life["initial"])

    def test_life_applies_the_table_and_sets_the_flags(self):
        life = load()["lifecycle"]
        gw = gateway(1 << 20)
        for state, row in life["table"].items():
            for event, outcome in row.items():
                ch = W.Channel(gw, 3)
                ch._st = state
                if outcome == "violation":
                    self.assertRaises(W.ProtocolError, W._life, ch, event)
                    self.assertEqual(ch._st, state)
                elif outcome == "refused":
                    self.assertIsNone(W._life(ch, event))
                    self.assertEqual(ch._st, state)
                else:
                    self.assertEqual(W._life(ch, event), state)
                    self.assertEqual(ch._st, outcome)
                    # the hot paths' flags follow the state reached
                    self.assertEqual(ch._sc, outcome in life["closing"], outcome)
                    self.assertEqual(ch._rc, outcome.endswith("/closed"), outcome)


class WindowPolicy(unittest.TestCase):
    def test_the_constants_are_the_cores(self):
        window = load()["window"]
        self.assertEqual(W.GRANT_DIVISOR, window["grant_divisor"])
        self.assertEqual(W.EAGER_DIVISOR, window["eager_divisor"])
        for w in (1, 7, 100, 4 << 20):
            gw = gateway(w)
            self.assertEqual(gw._half, max(1, w // window["grant_divisor"]))
            self.assertEqual(gw._eager, max(1, w // window["eager_divisor"]))

    def test_the_cores_cases_replay_on_the_worker(self):
        for case in load()["window"]["cases"]:
            gw = gateway(case["window"])
            ch = W.Channel(gw, 3)
            ch._items = deque()
            for op, n, expected in case["ops"]:
                if op == "chunk":
                    got = grant(gw._w_chunk(ch, n))
                elif op == "deliver":
                    got = gw._w_complete(ch, n)
                    ch._items.append((None, got))
                elif op == "consume":
                    ch._items.popleft()
                    got = grant(gw._w_taken(ch, n))
                else:
                    self.fail("unknown op %r" % op)
                self.assertEqual(got, expected, "%s %d in %r" % (op, n, case))


if __name__ == "__main__":
    unittest.main()
