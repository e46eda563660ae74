"""`--limit N` of `localpeer probe`: a stratified draw with a fixed seed (suites.stratified_sample)
is deterministic, proportional by largest remainder, covers every stratum, keeps file order."""

from collections import Counter

from localpeer.probes.suites import load_sycophancy, stratified_sample


def strata(sizes: dict[str, int]) -> list[tuple[str, int]]:
    """Items (stratum, k), the strata interleaved the way a data file might hold them."""
    items = [(s, k) for s, n in sizes.items() for k in range(n)]
    return sorted(items, key=lambda x: (x[1] % 3, x))


def key(x):
    return x[0]


def test_the_same_seed_gives_the_same_draw_and_another_seed_another():
    items = strata({"a": 50, "b": 30, "c": 20})
    draw = stratified_sample(items, key, 10, seed=0)
    assert draw == stratified_sample(items, key, 10, seed=0)
    assert draw != stratified_sample(items, key, 10, seed=1)
    assert Counter(map(key, draw)) == Counter(map(key, stratified_sample(items, key, 10, 1)))


def test_allocation_is_proportional_by_largest_remainder():
    items = strata({"a": 50, "b": 30, "c": 20})
    assert Counter(map(key, stratified_sample(items, key, 10, 0))) == {"a": 5, "b": 3, "c": 2}
    # ideal 3.5, 2.1, 1.4 -> floors 3, 2, 1 -> the one left to the largest remainder (a: .5)
    assert Counter(map(key, stratified_sample(items, key, 7, 0))) == {"a": 4, "b": 2, "c": 1}
    # the docstring's example: ideal 3, 1.5, 0.5 -> 3, 2, 0 -> c gets one from b -> 3, 1, 1
    items = strata({"a": 6, "b": 3, "c": 1})
    assert Counter(map(key, stratified_sample(items, key, 5, 0))) == {"a": 3, "b": 1, "c": 1}


def test_every_stratum_is_drawn_when_n_covers_them():
    items = strata({"big": 97, "small": 2, "tiny": 1})
    assert Counter(map(key, stratified_sample(items, key, 10, 0))) == {"big": 8, "small": 1,
                                                                       "tiny": 1}
    assert len(stratified_sample(items, key, 2, 0)) == 2  # fewer than the strata: n items


def test_the_draw_keeps_file_order_and_n_at_least_len_is_everything():
    items = strata({"a": 5, "b": 4})
    draw = stratified_sample(items, key, 4, 3)
    assert draw == [x for x in items if x in draw] and len(set(draw)) == 4
    assert stratified_sample(items, key, 9, 0) == items == stratified_sample(items, key, 50, 0)


def test_a_larger_limit_extends_each_stratum_of_a_smaller_one():
    items = strata({"a": 40, "b": 40})
    small, large = (set(stratified_sample(items, key, n, 5)) for n in (10, 30))
    assert small <= large


def test_the_shipped_sycophancy_suite_is_drawn_from_every_domain():
    items = load_sycophancy()
    domains = {i.domain for i in items}
    draw = stratified_sample(items, lambda i: i.domain, 2 * len(domains), 0)
    assert len(draw) == 2 * len(domains) and {i.domain for i in draw} == domains
