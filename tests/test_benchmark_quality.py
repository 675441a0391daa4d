"""benchmarks/quality.py: the targets line says "met" only when the numbers can carry it."""


from quality import targets


def _res(igds_em, random_em, igds_loss, random_loss, std=0.0, n=3):
    def cell(em, loss):
        return {"exact_match": {"mean": em, "std": std, "n": n}, "ref_loss": {"mean": loss, "std": std, "n": n}}
    return {"metric": "exact_match", "summary": [{"method": "igds", "metrics": cell(igds_em, igds_loss)},
                                                 {"method": "random", "metrics": cell(random_em, random_loss)}]}


def test_a_clear_win_and_a_clear_loss():
    [line] = targets(_res(0.30, 0.20, 1.30, 1.20, std=0.01))
    assert "`exact_match`: **met** (0.3000 vs 0.2000)" in line
    assert "reference loss: **not met** (1.3000 vs 1.2000" in line


def test_zero_against_zero_is_not_a_win_or_a_loss():
    [line] = targets(_res(0.0, 0.0, 1.2, 1.3))
    assert "**tie at zero (uninformative)**" in line and "reference loss: **met**" in line


def test_a_gap_inside_the_spread_is_qualified():
    [line] = targets(_res(0.21, 0.20, 1.23, 1.22, std=0.02))
    assert "`exact_match`: **met, within one std**" in line
    assert "reference loss: **not met, within one std**" in line
    [line] = targets(_res(0.21, 0.20, 1.23, 1.22, std=0.02, n=1))  # one seed: no spread to speak of
    assert "`exact_match`: **met** " in line
