"""Segment profiles, names and campaign recommendations.

A segment is named from its profile, the median of each feature over its
players, compared with the median over all players. Each trait below has a
test and a strength; names are assigned greedily, strongest match first,
so every segment gets a unique name:

============================  ==============================================
name                          test on the segment median (``pop`` = all players)
============================  ==============================================
Lapsing                       recency_days >= max(14, 3 x pop)
High Roller                   avg_stake >= 4 x pop
Night Owl                     late_night_share >= max(0.4, 1.8 x pop)
Weekend Warrior               weekend_share >= max(0.55, 1.6 x pop)
Bonus Hunter                  bonus_share >= max(0.15, 3 x pop)
Cashback Lover                cashback_share >= max(0.08, 3 x pop)
Sports Bettor                 sports_share >= 0.6 and pop < 0.6
Crash Enthusiast              crash_share >= 0.6 and pop < 0.6
Casino Player                 casino_share >= 0.6 and pop < 0.6
High-Multiplier Chaser        crash_log_cashout >= 1.5 x pop, crash players
Early Cash-Out                crash_log_cashout <= 0.6 x pop, crash players
Frequent Player               bets_per_day >= 2.5 x pop
Recently Active               recency_days <= max(1, 0.2 x pop)
Casual                        bets_per_day <= pop and avg_stake <= pop
Regular                       everything else
============================  ==============================================

A segment that matches no free trait is "Casual" or "Regular"; a repeated
fallback name gets a Roman numeral.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

Profile = Mapping[str, float]


@dataclass(frozen=True)
class Campaign:
    """A campaign recommendation; ``promotion`` marks bonus or incentive offers."""

    id: str
    title: str
    channel: str
    promotion: bool


CAMPAIGNS: dict[str, list[Campaign]] = {
    "High Roller": [
        Campaign("vip-host", "Personal VIP host introduction", "phone", False),
        Campaign("vip-event", "Invitation to an exclusive event", "email", True),
    ],
    "Lapsing": [
        Campaign("win-back-free-bet", "Win-back free bet", "email", True),
        Campaign("whats-new", "What is new since your last visit", "email", False),
    ],
    "Night Owl": [
        Campaign("late-night-tournament", "Late-night tournament entry", "push", True),
        Campaign("session-reminder", "Session time reminder settings", "in-app", False),
    ],
    "Weekend Warrior": [
        Campaign("weekend-acca-boost", "Weekend accumulator boost", "push", True),
        Campaign(
            "fixtures-preview", "Friday preview of weekend fixtures", "email", False
        ),
    ],
    "Bonus Hunter": [
        Campaign(
            "wagering-clarity", "Plain-language bonus terms digest", "email", False
        ),
        Campaign(
            "loyalty-points", "Loyalty points instead of cash bonuses", "in-app", True
        ),
    ],
    "Cashback Lover": [
        Campaign("cashback-tier", "Cashback tier upgrade", "in-app", True),
        Campaign("cashback-statement", "Monthly cashback statement", "email", False),
    ],
    "Sports Bettor": [
        Campaign("odds-boost", "Odds boost on favourite league", "push", True),
        Campaign("bet-builder-tips", "Bet builder tips", "email", False),
    ],
    "Crash Enthusiast": [
        Campaign(
            "crash-leaderboard", "Crash game leaderboard challenge", "in-app", True
        ),
        Campaign("new-crash-titles", "New crash titles showcase", "email", False),
    ],
    "Casino Player": [
        Campaign("free-spins", "Free spins on new slots", "email", True),
        Campaign(
            "game-recommendations", "Personal game recommendations", "in-app", False
        ),
    ],
    "High-Multiplier Chaser": [
        Campaign("auto-cashout-tips", "How auto cash-out works", "in-app", False),
        Campaign("multiplier-mission", "Multiplier mission reward", "push", True),
    ],
    "Early Cash-Out": [
        Campaign("streak-reward", "Cash-out streak reward", "push", True),
        Campaign("game-stats", "Personal game statistics", "in-app", False),
    ],
    "Frequent Player": [
        Campaign("loyalty-tier", "Loyalty tier progress", "in-app", True),
        Campaign("activity-summary", "Weekly activity summary", "email", False),
    ],
    "Recently Active": [
        Campaign(
            "personal-picks", "Personal picks for the next session", "in-app", False
        ),
        Campaign("streak-bonus", "Activity streak bonus", "push", True),
    ],
    "Casual": [
        Campaign("welcome-back-tips", "Getting-started tips", "email", False),
        Campaign("small-deposit-match", "Small deposit match", "email", True),
    ],
    "Regular": [
        Campaign("newsletter", "Monthly newsletter", "email", False),
        Campaign("reload-bonus", "Reload bonus", "email", True),
    ],
}

#: Recommendations that replace promotions for players with harm markers.
SAFER_GAMBLING_CAMPAIGNS: list[Campaign] = [
    Campaign("safer-gambling-check-in", "Safer-gambling check-in call", "phone", False),
    Campaign(
        "deposit-limit-reminder", "Deposit limit and time-out tools", "email", False
    ),
]


def _median(profile: Profile, name: str) -> float:
    return float(profile.get(name, 0.0))


def _ratio_test(
    name: str, factor: float, floor: float = 0.0
) -> Callable[[Profile, Profile], float]:
    def test(segment: Profile, population: Profile) -> float:
        threshold = max(floor, factor * _median(population, name))
        value = _median(segment, name)
        if threshold <= 0:
            return 0.0
        return value / threshold if value >= threshold else 0.0

    return test


def _dominant_product(name: str) -> Callable[[Profile, Profile], float]:
    def test(segment: Profile, population: Profile) -> float:
        value = _median(segment, name)
        if value >= 0.6 and _median(population, name) < 0.6:
            return value / 0.6
        return 0.0

    return test


def _crash_cashout(high: bool) -> Callable[[Profile, Profile], float]:
    def test(segment: Profile, population: Profile) -> float:
        if _median(segment, "crash_share") < 0.5:
            return 0.0
        value = _median(segment, "crash_log_cashout")
        base = _median(population, "crash_log_cashout")
        if base <= 0:
            return 0.0
        if high:
            return value / (1.5 * base) if value >= 1.5 * base else 0.0
        return (0.6 * base) / max(value, 1e-9) if value <= 0.6 * base else 0.0

    return test


def _recent(segment: Profile, population: Profile) -> float:
    threshold = max(1.0, 0.2 * _median(population, "recency_days"))
    value = _median(segment, "recency_days")
    # A weak trait: it names a segment only when no stronger one is free.
    return 0.5 if value <= threshold else 0.0


def _casual(segment: Profile, population: Profile) -> float:
    low_activity = _median(segment, "bets_per_day") <= _median(
        population, "bets_per_day"
    )
    low_stakes = _median(segment, "avg_stake") <= _median(population, "avg_stake")
    return 1.0 if low_activity and low_stakes else 0.0


TRAITS: dict[str, Callable[[Profile, Profile], float]] = {
    "Lapsing": _ratio_test("recency_days", 3.0, floor=14.0),
    "High Roller": _ratio_test("avg_stake", 4.0),
    "Night Owl": _ratio_test("late_night_share", 1.8, floor=0.4),
    "Weekend Warrior": _ratio_test("weekend_share", 1.6, floor=0.55),
    "Bonus Hunter": _ratio_test("bonus_share", 3.0, floor=0.15),
    "Cashback Lover": _ratio_test("cashback_share", 3.0, floor=0.08),
    "Sports Bettor": _dominant_product("sports_share"),
    "Crash Enthusiast": _dominant_product("crash_share"),
    "Casino Player": _dominant_product("casino_share"),
    "High-Multiplier Chaser": _crash_cashout(high=True),
    "Early Cash-Out": _crash_cashout(high=False),
    "Frequent Player": _ratio_test("bets_per_day", 2.5),
    "Recently Active": _recent,
}

_ROMAN = (
    "",
    " II",
    " III",
    " IV",
    " V",
    " VI",
    " VII",
    " VIII",
    " IX",
    " X",
    " XI",
    " XII",
)


def name_segments(profiles: list[Profile], population: Profile) -> list[str]:
    """Give each segment profile a unique name by the rules in this module's doc.

    Examples
    --------
    >>> population = {"avg_stake": 10.0, "bets_per_day": 2.0, "recency_days": 3.0}
    >>> name_segments([{"avg_stake": 80.0, "bets_per_day": 2.0, "recency_days": 2.0},
    ...                {"avg_stake": 5.0, "bets_per_day": 1.0, "recency_days": 30.0}],
    ...               population)
    ['High Roller', 'Lapsing']
    """
    strengths = np.array(
        [
            [test(profile, population) for test in TRAITS.values()]
            for profile in profiles
        ]
    ).reshape(len(profiles), len(TRAITS))
    trait_names = list(TRAITS)
    names: list[str | None] = [None] * len(profiles)
    while True:
        if strengths.size == 0 or strengths.max() <= 0:
            break
        segment, trait = np.unravel_index(int(np.argmax(strengths)), strengths.shape)
        names[segment] = trait_names[trait]
        strengths[segment, :] = 0.0
        strengths[:, trait] = 0.0
    used: dict[str, int] = {}
    result: list[str] = []
    for index, name in enumerate(names):
        if name is None:
            name = "Casual" if _casual(profiles[index], population) else "Regular"
        count = used.get(name, 0)
        used[name] = count + 1
        result.append(name + _ROMAN[min(count, len(_ROMAN) - 1)])
    return result


def campaigns_for(name: str) -> list[Campaign]:
    """Return the campaigns of a segment name, ignoring a Roman-numeral suffix."""
    base = name
    for suffix in reversed(_ROMAN[1:]):
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            break
    return CAMPAIGNS.get(base, CAMPAIGNS["Regular"])


@dataclass
class SegmentProfile:
    """A segment's name, size, feature medians and recommendations."""

    cluster_id: int
    name: str
    size: int
    share: float
    medians: dict[str, float]
    campaigns: list[Campaign] = field(default_factory=list)

    def key_statistics(self) -> dict[str, float]:
        """Return the handful of statistics shown in segment tables."""
        keys = (
            "avg_stake",
            "bets_per_day",
            "recency_days",
            "late_night_share",
            "weekend_share",
            "crash_log_cashout",
        )
        return {key: self.medians[key] for key in keys if key in self.medians}

    def to_dict(self) -> dict[str, object]:
        """Return the profile as plain JSON-ready data."""
        data = asdict(self)
        data["campaigns"] = [asdict(c) for c in self.campaigns]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SegmentProfile:
        """Rebuild a profile from :meth:`to_dict` output."""
        values = dict(data)
        values["campaigns"] = [Campaign(**c) for c in values.get("campaigns", [])]  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]
