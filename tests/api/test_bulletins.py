"""The monthly bulletin over HTTP: child regions ranked by the composite score, last month's
figures and the change, CSV and XLSX with Chinese headers, scope."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import load_workbook

from gridapi.models import Case

from ..factories import COMMUNITY_A, COUNTY, TOWNSHIP
from .test_indicators import COMMUNITY_2, MARCH_TOWNSHIP, TOWNSHIP_2, cases, world  # noqa: F401


def get(client: Any, path: str, status: int = 200) -> Any:
    r = client.get(f"/api/v1/bulletins/{path}")
    assert r.status_code == status, r.get_data(as_text=True)[:500]
    return r


def test_the_county_bulletin_ranks_its_townships(client, cases):  # noqa: F811
    body = get(client, f"{COUNTY}/2026-03").get_json()
    assert body["region"]["code"] == COUNTY
    assert body["month"] == "2026-03" and body["previous_month"] == "2026-02"
    items = {i["code"]: i for i in body["items"]}
    assert set(items) == {TOWNSHIP, TOWNSHIP_2}
    first, second = items[TOWNSHIP], items[TOWNSHIP_2]
    assert first["indicators"] == MARCH_TOWNSHIP
    # The second township: G filed, due (6 March) and closed on time on 3 March, rated 4;
    # handled on the spot (no dispatch leg): 100 over the weights that have a value.
    assert second["indicators"]["closure_rate"] == 1.0
    assert second["indicators"]["on_time_handling_rate"] is None
    assert second["indicators"]["score"] == 100.0
    assert [i["code"] for i in body["items"]] == [TOWNSHIP_2, TOWNSHIP]
    assert [i["rank"] for i in body["items"]] == [1, 2]
    # Last month: only A was filed (in the first township), nothing was due or closed.
    assert first["previous"]["filed"] == 1 and first["previous"]["due"] == 0
    assert first["change"]["filed"] == 4 - 1
    assert first["change"]["closure_rate"] is None  # no rate last month
    assert second["previous"]["score"] is None
    # The total is the whole county; its counts are the sum of the rows.
    for name in ("filed", "due", "closed", "handled", "overdue_open", "rated"):
        assert body["total"][name] == sum(i["indicators"][name] for i in body["items"]), name


def test_csv_and_xlsx_carry_chinese_headers_and_the_same_rows(client, cases):  # noqa: F811
    body = get(client, f"{COUNTY}/2026-03").get_json()
    r = get(client, f"{COUNTY}/2026-03?format=csv")
    assert r.mimetype == "text/csv"
    assert "bulletin-320508000000-2026-03.csv" in r.headers["Content-Disposition"]
    raw = r.get_data()
    assert raw.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    header = rows[0]
    assert header[:3] == ["排名", "区划代码", "名称"]
    assert "结案率" in header and "综合得分" in header and "结案率较上月" in header
    assert [r[1] for r in rows[1:]] == [TOWNSHIP_2, TOWNSHIP, COUNTY]
    first = rows[2]
    assert first[0] == "2" and first[2] == "平江街道"
    assert first[header.index("立案数")] == "4"
    assert first[header.index("结案率")] == "0.6667"
    assert first[header.index("综合得分")] == str(body["items"][1]["indicators"]["score"])
    assert first[header.index("立案数较上月")] == "3"
    assert rows[3][2] == "姑苏区(合计)"

    r = get(client, f"{COUNTY}/2026-03?format=xlsx")
    assert r.mimetype.endswith("spreadsheetml.sheet")
    sheet = load_workbook(io.BytesIO(r.get_data())).active
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == header
    assert values[2][:3] == [2, TOWNSHIP, "平江街道"]
    assert values[2][header.index("结案率")] == 0.6667
    assert values[2][header.index("平均处置时长(工作小时)")] == 33.25


def test_bad_requests_and_scope(client, accounts, cases):  # noqa: F811
    get(client, f"{COUNTY}/2026-13", 422)
    # a month that has not begun ranked every township 0 of 0 (200)
    later = datetime.now(ZoneInfo("Asia/Shanghai")).date().replace(day=1) + timedelta(days=32)
    month = get(client, f"{COUNTY}/{later:%Y-%m}", 422).get_json()["errors"]["path"]["month"]
    assert "begun" in month[0]
    get(client, f"{COUNTY}/{datetime.now(ZoneInfo('Asia/Shanghai')):%Y-%m}")  # the month so far
    get(client, f"{COUNTY}/March", 422)
    get(client, f"{COUNTY}/2026-03?format=pdf", 422)
    community = get(client, f"{COMMUNITY_A}/2026-03").get_json()  # no children to rank
    assert community["items"] == [] and community["total"]["filed"] == 4
    get(client, "320508009000/2026-03", 404)
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    body = get(office, f"{TOWNSHIP}/2026-03").get_json()
    assert [i["code"] for i in body["items"]] == [COMMUNITY_A, "320508001002"]
    assert (
        get(office, f"{COUNTY}/2026-03", 404).get_json()
        == get(office, "320508009000/2026-03", 404).get_json()
    )
    worker = accounts.client("worker", "grid_worker", grids=[COMMUNITY_A + "001"])
    get(worker, f"{TOWNSHIP}/2026-03", 403)


def test_every_format_answers_a_content_type_the_spec_documents(client, cases):  # noqa: F811
    """The JSON answer was once undocumented (the file types replaced it): schemathesis ST105."""
    from gridapi.spec import spec_dict

    documented = spec_dict()["paths"]["/api/v1/bulletins/{region}/{month}"]["get"]
    content = documented["responses"]["200"]["content"]
    for query in ({}, {"format": "json"}, {"format": "csv"}, {"format": "xlsx"}):
        r = client.get(f"/api/v1/bulletins/{COUNTY}/2026-03", query_string=query)
        assert r.status_code == 200, r.get_json()
        assert r.mimetype in content, (query, r.mimetype)


def test_a_region_name_excel_would_run_is_written_as_text(client, cases):  # noqa: F811
    """A child region named like a formula (CSV injection) was written as is: in the CSV
    Excel ran it, and openpyxl stored it in the XLSX as a formula."""
    from ..factories import rectangle

    name = '=HYPERLINK("http://evil.example","点击")'
    r = client.post(
        "/api/v1/regions/import",
        json=[{"code": "320508003000", "name": name, "boundary": rectangle(8, 0, 9, 1)}],
    )
    assert r.status_code == 200, r.get_json()
    raw = get(client, f"{COUNTY}/2026-03?format=csv").get_data().decode("utf-8-sig")
    rows = {row[1]: row for row in csv.reader(io.StringIO(raw))}
    assert rows["320508003000"][2] == "'" + name
    assert rows[TOWNSHIP][2] == "平江街道"  # other names unchanged
    book = load_workbook(io.BytesIO(get(client, f"{COUNTY}/2026-03?format=xlsx").get_data()))
    cells = {row[1].value: row[2] for row in book.active.iter_rows()}
    assert cells["320508003000"].data_type == "s"
    assert cells["320508003000"].value == "'" + name
    # The JSON answer keeps the name as it is.
    items = get(client, f"{COUNTY}/2026-03").get_json()["items"]
    assert {i["code"]: i["name"] for i in items}["320508003000"] == name


def test_children_below_a_skipped_level_are_counted(app, client, accounts, world):  # noqa: F811
    """东莞 has no counties: its children are townships (9-digit prefixes), and 仙桃, a
    province-administered county-level city, sits right under 湖北 (a 6-digit prefix). The
    bulletin keyed the cases by the parent's next level and counted 0 for such children."""
    from ..factories import rectangle
    from .test_indicators import Timeline, at

    rows = [
        {"code": "440000000000", "name": "广东省"},
        {"code": "441900000000", "name": "东莞市"},
        {"code": "441900003000", "name": "东城街道", "boundary": rectangle(10, 0, 12, 1)},
        {"code": "441900003001", "name": "东城社区", "boundary": rectangle(10, 0, 12, 1)},
        {"code": "420000000000", "name": "湖北省"},
        {"code": "420100000000", "name": "武汉市"},
        {"code": "429004000000", "name": "仙桃市", "boundary": rectangle(14, 0, 16, 1)},
        {"code": "429004001000", "name": "沙嘴街道", "boundary": rectangle(14, 0, 16, 1)},
        {"code": "429004001001", "name": "沙嘴社区", "boundary": rectangle(14, 0, 16, 1)},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()
    t = Timeline(app, accounts.create("admin2", "admin"), accounts.create("checker", "admin"))
    dongguan = t.filed(at(3, 2, 9), col=11)
    xiantao = t.filed(at(3, 3, 9), col=15)
    t.finish(xiantao, at(3, 3, 10), at(3, 3, 11))
    with app.extensions["gridapi"].sessions() as session:
        located = {c.id: c.region_code for c in session.query(Case)}
    assert located[dongguan] == "441900003001" and located[xiantao] == "429004001001"

    body = get(client, "441900000000/2026-03").get_json()
    assert [i["code"] for i in body["items"]] == ["441900003000"]
    assert body["items"][0]["indicators"]["filed"] == 1 == body["total"]["filed"]
    assert body["items"][0]["indicators"]["overdue_open"] == 1

    body = get(client, "420000000000/2026-03").get_json()
    items = {i["code"]: i for i in body["items"]}
    assert set(items) == {"420100000000", "429004000000"}
    assert items["429004000000"]["indicators"]["filed"] == 1
    assert items["429004000000"]["indicators"]["closed"] == 1
    assert items["429004000000"]["rank"] == 1
    assert items["420100000000"]["indicators"]["filed"] == 0
    assert body["total"]["filed"] == 1


def test_the_ranking_holds_the_townships_of_today(client, cases):  # noqa: F811
    """The townships ranked were those whose period had no end: a township whose merger is
    planned for next month was left out of this month's bulletin, and one planned to start
    next month was ranked already. It is the townships valid today."""
    later = (datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=30)).isoformat()
    r = client.patch(f"/api/v1/regions/{TOWNSHIP_2}", json={"valid_to": later})
    assert r.status_code == 200, r.get_json()
    planned = "320508003000"
    r = client.post(
        "/api/v1/regions", json={"code": planned, "name": "新设街道", "valid_from": later}
    )
    assert r.status_code == 201, r.get_json()
    body = get(client, f"{COUNTY}/2026-03").get_json()
    assert [i["code"] for i in body["items"]] == [TOWNSHIP_2, TOWNSHIP]


def test_a_past_months_bulletin_holds_the_townships_of_that_month(client, cases):  # noqa: F811
    """A past month's bulletin took the regions valid today: a township renamed since was
    shown by its new name, and one created since was ranked in a month before it existed.
    It holds those valid on the month's last day; this month's, those of today."""
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    renamed = {"name": "平江新区街道", "effective_from": today}
    r = client.patch(f"/api/v1/regions/{TOWNSHIP}", json=renamed)
    assert r.status_code == 200, r.get_json()
    created = "320508003000"
    r = client.post(
        "/api/v1/regions", json={"code": created, "name": "新设街道", "valid_from": today}
    )
    assert r.status_code == 201, r.get_json()
    r = client.patch(
        f"/api/v1/regions/{COUNTY}", json={"name": "新姑苏区", "effective_from": today}
    )
    assert r.status_code == 200, r.get_json()

    march = get(client, f"{COUNTY}/2026-03").get_json()
    assert march["region"]["name"] == "姑苏区"
    assert {i["code"]: i["name"] for i in march["items"]} == {
        TOWNSHIP: "平江街道",
        TOWNSHIP_2: "观前街道",
    }
    assert march["items"][1]["indicators"] == MARCH_TOWNSHIP  # the same cases, as before
    raw = get(client, f"{COUNTY}/2026-03?format=csv").get_data().decode("utf-8-sig")
    names = {row[1]: row[2] for row in csv.reader(io.StringIO(raw))}
    assert (names[TOWNSHIP], names[COUNTY]) == ("平江街道", "姑苏区(合计)")
    assert created not in names

    this_month = get(client, f"{COUNTY}/{today[:7]}").get_json()
    assert this_month["region"]["name"] == "新姑苏区"
    items = {i["code"]: i["name"] for i in this_month["items"]}
    assert (items[TOWNSHIP], items[created]) == ("平江新区街道", "新设街道")


def test_a_township_ended_mid_month_is_ranked_in_that_months_bulletin(client, cases):  # noqa: F811
    """The ranking held the townships valid on the month's last day: one merged or ended
    mid-month dropped out of that month's bulletin though it had cases. It holds those valid
    on any day of the month; the next month's leaves it out."""
    before = {i["code"]: i for i in get(client, f"{COUNTY}/2026-03").get_json()["items"]}
    assert before[TOWNSHIP_2]["indicators"]["filed"] > 0
    for code in (COMMUNITY_2, TOWNSHIP_2):  # the community first: none outlives its township
        r = client.patch(f"/api/v1/regions/{code}", json={"valid_to": "2026-03-20"})
        assert r.status_code == 200, r.get_json()

    march = get(client, f"{COUNTY}/2026-03").get_json()
    items = {i["code"]: i for i in march["items"]}
    assert sorted(items) == [TOWNSHIP, TOWNSHIP_2]
    assert items[TOWNSHIP_2]["name"] == "观前街道"
    assert items[TOWNSHIP_2]["indicators"] == before[TOWNSHIP_2]["indicators"]
    assert items[TOWNSHIP_2]["rank"] == before[TOWNSHIP_2]["rank"]
    raw = get(client, f"{COUNTY}/2026-03?format=csv").get_data().decode("utf-8-sig")
    assert TOWNSHIP_2 in {row[1] for row in csv.reader(io.StringIO(raw))}
    april = get(client, f"{COUNTY}/2026-04").get_json()
    assert [i["code"] for i in april["items"]] == [TOWNSHIP]


def test_the_total_row_carries_the_change_from_last_month(client, cases):  # noqa: F811
    """The CSV's and the XLSX's "(合计)" row had every "…较上月" blank, though the JSON
    carries ``previous_total``: it is this month's total minus last month's, as in every
    other row."""
    body = get(client, f"{COUNTY}/2026-03").get_json()
    total, before = body["total"], body["previous_total"]
    assert (total["filed"], before["filed"]) == (5, 1)  # B, C, D, F, G; A in February
    raw = get(client, f"{COUNTY}/2026-03?format=csv").get_data().decode("utf-8-sig")
    header, *rows = list(csv.reader(io.StringIO(raw)))
    last = rows[-1]
    assert last[2] == "姑苏区(合计)"
    assert last[header.index("立案数较上月")] == "4"
    assert last[header.index("结案数较上月")] == str(total["closed"] - before["closed"])
    assert last[header.index("结案率较上月")] == ""  # no rate last month: no change
    book = load_workbook(io.BytesIO(get(client, f"{COUNTY}/2026-03?format=xlsx").get_data()))
    values = [list(row) for row in book.active.iter_rows(values_only=True)]
    assert values[-1][header.index("立案数较上月")] == 4
    assert (
        values[-1][header.index("超期在办数较上月")]
        == total["overdue_open"] - before["overdue_open"]
    )


def test_errors_name_the_path_parameter(client, accounts, world):  # noqa: F811
    """A malformed region was filed under ``errors.query.region`` though the region is in
    the path, and a month past the years Python holds was "A number is too large." naming
    nothing. Both name the path's parameter; so does the 404, alike for a region that does
    not exist and one outside the scope."""
    body = get(client, "999999999999/2026-11", 422).get_json()
    assert list(body["errors"]) == ["path"] and list(body["errors"]["path"]) == ["region"]
    body = get(client, f"{COUNTY}/9999-12", 422).get_json()
    assert list(body["errors"]) == ["path"] and list(body["errors"]["path"]) == ["month"]
    body = get(client, "320508009000/2026-03", 404).get_json()
    assert list(body["errors"]) == ["path"] and list(body["errors"]["path"]) == ["region"]
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    assert (
        get(office, f"{TOWNSHIP_2}/2026-03", 404).get_json()
        == get(office, "320508009000/2026-03", 404).get_json()
    )
