"""The web console in real headless Chromium, against a real coordinator (with an auth file) and
two real bank services: sign-in, the transaction list and filters, a transaction held in Prepared
by a failpoint with its branches and XA codes, the rule that disables its rollback, a forced
rollback of a Created transaction from the page, a refused token, and the console over TLS; a
slow answer to an earlier view never draws over a later one.

Screenshots of the main pages are saved under the test's temporary directory (the path is
printed); set XATM_SCREENSHOTS to a directory to keep them there instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver import Chrome as WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.admin_support import audit_records, rest
from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem
from tests.browser import PATIENCE, chromium, sign_in, wait_for
from tests.certs import make_certs
from xatm.coordinator.server.auth import hash_token
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import Transaction, TransactionManager
from xatm.participant.client.context import use
from xatm.participant.errors import XatmError

OPS, VIEWER, SERVICE = (f"{who}-{secrets.token_urlsafe(18)}" for who in ("ops", "view", "svc"))
TOKENS = {"alice": ("operator", OPS), "watcher": ("viewer", VIEWER), "svc": ("service", SERVICE)}
COLLECTION = "/admin/v1/xa-transaction"


def auth_file(path: Path, tokens: dict[str, tuple[str, str]]) -> Path:
    """A token file granting each name its (role, token)."""
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"\n\n'
            for name, (role, token) in tokens.items()
        )
    )
    return path


@dataclass
class Lab:
    system: BankSystem
    tm: TransactionManager
    shots: Path

    @property
    def base(self) -> str:
        return f"http://{self.system.coordinator.http}"

    def status(self, gtrid: str) -> str:
        reply = rest(self.base, "GET", f"{COLLECTION}/{gtrid}", token=VIEWER)
        assert reply.status == 200, reply.body
        return str(reply.body["status"])

    def begin(self, *banks: str) -> Transaction:
        """A transaction with a branch in each bank, left open (Created)."""
        with use(None):
            tx = self.tm.begin(timeout=300)
        with use(tx.context):
            for bank in banks:
                self.system.apply(bank, f"acct-{secrets.token_hex(4)}", 1)
        return tx

    def wait(self, gtrid: str, status: str) -> None:
        """Until ``gtrid`` has ``status`` (the failpoint holds it there for minutes)."""
        for _ in range(400):
            if self.status(gtrid) == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"{gtrid} is {self.status(gtrid)}, not {status}")

    def open(self, driver: WebDriver, token: str, gtrid: str, element_id: str, text: str) -> None:
        """Sign in with ``token`` and open ``gtrid``'s page, until ``element_id`` shows ``text``."""
        sign_in(driver, self.base, token)
        wait_for(driver, "page-transactions")
        driver.get(f"{self.base}/console/#/tx/{gtrid}")
        wait_for(driver, element_id, text=text)

    def shot(self, driver: object, name: str) -> None:
        path = self.shots / f"console-{name}.png"
        driver.save_screenshot(str(path))  # type: ignore[attr-defined]
        print(f"screenshot: {path}")


def _quietly(tx: Transaction) -> None:
    with contextlib.suppress(XatmError):
        tx.commit()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("XATM_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **TEST_COORDINATOR_ENV,
        "XATM_AUTH_FILE": str(auth_file(root / "tokens.toml", TOKENS)),
        # Every commit stops after the votes, before its decision: a transaction stays Prepared.
        "XATM_FAILPOINTS": "coordinator.before_decision=sleep(600000)",
        "XATM_CALL_TIMEOUT": "20",
    }
    system = BankSystem(root, coordinator_env=env)
    try:
        system.start(bank_env={name: {"XATM_TOKEN": SERVICE} for name in system.banks})
        # Eager: the console shows transactions whose work is still running.
        with TransactionManager(system.coordinator.address, token=SERVICE, eager=True) as tm:
            yield Lab(system, tm, shots)
    finally:
        system.stop()


def test_a_wrong_token_is_refused(lab: Lab) -> None:
    with chromium() as driver:
        sign_in(driver, lab.base, "not-a-token")
        error = wait_for(driver, "signin-error", text="Sign-in refused")
        assert "unknown token" in error.text or "token" in error.text.lower()
        assert not driver.find_element(By.ID, "nav").is_displayed()
        assert not driver.find_element(By.ID, "page-transactions").is_displayed()
        lab.shot(driver, "refused")


def test_a_prepared_transaction_shows_branches_codes_and_why_rollback_is_disabled(lab: Lab) -> None:
    tx = lab.begin("bank-a", "bank-b")
    threading.Thread(target=_quietly, args=(tx,), daemon=True).start()
    lab.wait(tx.gtrid, "Prepared")

    with chromium() as driver:
        sign_in(driver, lab.base, VIEWER)
        wait_for(driver, "page-transactions")
        driver.find_element(By.ID, "preset-in-doubt").click()  # Prepared, Committing, Rollingback
        link = wait_for(driver, "tx-table", text=tx.gtrid).find_element(By.LINK_TEXT, tx.gtrid)
        rows = driver.find_elements(By.CSS_SELECTOR, "#tx-table tbody tr")
        assert all("Prepared" in row.text for row in rows), [row.text for row in rows]
        lab.shot(driver, "transactions")
        link.click()

        wait_for(driver, "tx-summary", text="Prepared")
        branches = wait_for(driver, "branch-table", text="XA_OK")
        rows = branches.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert len(rows) == 2
        for row in rows:
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            assert cells[1] in ("bank-a", "bank-b") and cells[3] == "Prepared"
            assert cells[4] == "XA_OK" and cells[5] == "prepare", cells
        history = driver.find_elements(By.CSS_SELECTOR, ".history-table")
        assert len(history) == 2
        for table in history:
            assert "XA_OK" in table.text and "prepare" in table.text

        rollback = driver.find_element(By.ID, "force-rollback")
        assert not rollback.is_enabled()
        allowed = "Created, Preparing, Rollingback"
        rule = f"transaction {tx.gtrid} is Prepared; rollback is allowed only from {allowed}"
        assert driver.find_element(By.ID, "force-rollback-reason").text == rule
        assert rollback.get_attribute("title") == rule
        assert not driver.find_element(By.ID, "force-commit").is_enabled()
        assert not driver.find_element(By.ID, "forget").is_enabled()
        lab.shot(driver, "transaction-prepared")
    assert lab.status(tx.gtrid) == "Prepared"


#: Installed in the page: answers to the requests ``held(method, url)`` picks reach the console
#: 1.5 s late; ``window.heldAnswers`` counts those handed over.
HOLD = """
const held = new Function("method", "url", arguments[0]);
const real = window.fetch;
window.heldAnswers = 0;
window.fetch = async (path, init) => {
  const answer = await real(path, init);
  if (held((init && init.method) || "GET", String(path))) {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    window.heldAnswers += 1;
  }
  return answer;
};
"""


def hold(driver: WebDriver, picks: str) -> None:
    """Hold back the answers to the requests the JavaScript expression ``picks`` (of ``method``
    and ``url``) is true for; wait for them with :func:`held_answers`."""
    driver.execute_script(HOLD, f"return {picks};")


def held_answers(driver: WebDriver, count: int) -> None:
    WebDriverWait(driver, PATIENCE).until(lambda d: d.execute_script("return window.heldAnswers") == count)


def test_a_slow_answer_to_an_earlier_view_never_draws_over_a_later_one(lab: Lab) -> None:
    created = lab.begin("bank-a")  # on the whole list, not on the in-doubt one
    prepared = lab.begin("bank-a", "bank-b")
    threading.Thread(target=_quietly, args=(prepared,), daemon=True).start()
    lab.wait(prepared.gtrid, "Prepared")

    with chromium() as driver:
        sign_in(driver, lab.base, VIEWER)
        wait_for(driver, "tx-table", text=created.gtrid)
        hold(driver, 'url.includes("xa-transaction?") && !url.includes("status=")')  # the whole list
        driver.find_element(By.ID, "preset-clear").click()  # the whole list, answered late
        driver.find_element(By.ID, "preset-in-doubt").click()  # then in-doubt, answered at once
        held_answers(driver, 1)
        table = wait_for(driver, "tx-table", text=prepared.gtrid)
        rows = [row.text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert rows and all("Prepared" in row for row in rows), rows
        assert created.gtrid not in table.text
        assert "status=Prepared" in driver.execute_script("return location.hash")


def test_a_forced_rollback_answered_after_the_operator_moved_on_leaves_their_page_alone(lab: Lab) -> None:
    tx = lab.begin("bank-a")
    with chromium() as driver:
        lab.open(driver, OPS, tx.gtrid, "tx-summary", "Created")
        hold(driver, 'method === "DELETE"')
        driver.find_element(By.ID, "force-rollback").click()
        wait_for(driver, "confirm-ok").click()
        driver.find_element(By.ID, "nav-audit").click()  # before the rollback is answered
        held_answers(driver, 1)
        shown = wait_for(driver, "flash", text=f"Force rollback of {tx.gtrid}: Outcome: TX_OK").text
        assert "transaction Rolledback" in shown
        assert driver.find_element(By.ID, "page-audit").is_displayed()
        assert not driver.find_element(By.ID, "page-transaction").is_displayed()
        assert driver.execute_script("return document.body.dataset.shown") == "#/audit"
    assert lab.status(tx.gtrid) == "Rolledback"


def test_a_question_asked_on_a_page_left_is_never_answered_on_another(lab: Lab) -> None:
    first, second = lab.begin("bank-a"), lab.begin("bank-b")
    with chromium() as driver:
        lab.open(driver, OPS, first.gtrid, "tx-summary", "Created")
        driver.find_element(By.ID, "force-rollback").click()
        wait_for(driver, "confirm-text", text=f"Force rollback transaction {first.gtrid}?")
        driver.get(f"{lab.base}/console/#/tx/{second.gtrid}")  # the question left open
        wait_for(driver, "branch-table", text="bank-b")
        assert not driver.execute_script("return document.getElementById('confirm').open")
    assert (lab.status(first.gtrid), lab.status(second.gtrid)) == ("Created", "Created")


def test_a_transaction_that_cannot_be_shown_leaves_nothing_of_the_one_before(lab: Lab) -> None:
    tx = lab.begin("bank-b")
    with chromium() as driver:
        lab.open(driver, OPS, tx.gtrid, "branch-table", "bank-b")
        assert driver.find_element(By.ID, "force-rollback").is_enabled()
        driver.get(f"{lab.base}/console/#/tx/n1.unknown")
        wait_for(driver, "flash", text="Cannot show n1.unknown")
        assert tx.gtrid not in driver.find_element(By.ID, "page-transaction").text
        assert "bank-b" not in driver.find_element(By.ID, "branch-table").text
        for button in ("force-rollback", "force-commit", "forget"):
            assert not driver.find_element(By.ID, button).is_enabled()
    assert lab.status(tx.gtrid) == "Created"


def test_a_created_transaction_is_force_rolled_back_from_the_page(lab: Lab) -> None:
    tx = lab.begin("bank-a")
    assert lab.status(tx.gtrid) == "Created"
    with chromium() as driver:
        lab.open(driver, OPS, tx.gtrid, "tx-summary", "Created")
        button = driver.find_element(By.ID, "force-rollback")
        assert button.is_enabled() and driver.find_element(By.ID, "force-rollback-reason").text == ""
        button.click()
        wait_for(driver, "confirm-text", text=f"Force rollback transaction {tx.gtrid}?")
        driver.find_element(By.ID, "confirm-reason").send_keys("stuck order 42")
        lab.shot(driver, "confirm")
        driver.find_element(By.ID, "confirm-ok").click()
        shown = wait_for(driver, "outcome", text="Outcome: TX_OK; transaction Rolledback").text
        wait_for(driver, "tx-summary", text="Rolledback")
        assert not driver.find_element(By.ID, "force-rollback").is_enabled()
        lab.shot(driver, "rolled-back")

        driver.find_element(By.ID, "nav-audit").click()
        audit = wait_for(driver, "audit-table", text=tx.gtrid)
        assert "force_rollback" in audit.text and "stuck order 42" in audit.text
        lab.shot(driver, "audit")
    assert lab.status(tx.gtrid) == "Rolledback"
    record = next(r for r in audit_records(lab.system.coordinator.address, OPS) if r.gtrid == tx.gtrid)
    assert (record.actor, record.action, record.result) == ("alice", "force_rollback", "ok")
    assert record.peer.startswith("http ") and record.trace_id in shown


def test_a_viewer_is_shown_why_it_may_not_force_and_the_server_refuses_it_all_the_same(lab: Lab) -> None:
    tx = lab.begin("bank-b")
    with chromium() as driver:
        lab.open(driver, VIEWER, tx.gtrid, "tx-summary", "Created")
        for action in ("force-rollback", "force-commit", "forget"):
            assert not driver.find_element(By.ID, action).is_enabled()
        # Created allows a forced rollback: only the role keeps the viewer from it, and says so
        # (the status rule's message comes first where the status forbids an action anyway).
        why = driver.find_element(By.ID, "force-rollback-reason").text
        assert "role viewer" in why and "operator" in why, why
        assert "forget is allowed only from" in driver.find_element(By.ID, "forget-reason").text
    # The page only shows the rule: the action itself is refused to the viewer's token.
    refused = rest(lab.base, "DELETE", f"{COLLECTION}/{tx.gtrid}", token=VIEWER)
    assert refused.status == 403 and "role viewer" in refused.body["error"], refused
    assert lab.status(tx.gtrid) == "Created"
    with chromium() as driver:  # an operator on the same transaction may
        lab.open(driver, OPS, tx.gtrid, "tx-summary", "Created")
        assert driver.find_element(By.ID, "force-rollback").is_enabled()


def test_the_charts_draw_the_coordinators_metrics(lab: Lab) -> None:
    with chromium() as driver:
        sign_in(driver, lab.base, VIEWER)
        wait_for(driver, "page-transactions")
        driver.find_element(By.ID, "nav-charts").click()
        for chart in ("chart-throughput", "chart-outcomes", "chart-in-doubt", "chart-latency"):
            wait_for(driver, chart, text="0")  # axes and legends drawn from the first samples
        assert "branches" in driver.find_element(By.ID, "chart-in-doubt").text
        for _ in range(5):
            lab.begin()
        # Some sample of the throughput line now rises above its baseline (y = 146).
        WebDriverWait(driver, PATIENCE).until(
            lambda d: d.execute_script(
                "const line = document.querySelector('#chart-throughput polyline');"
                "return line && line.getAttribute('points').split(' ')"
                ".some(p => Number(p.split(',')[1]) < 145);"
            )
        )
        lab.shot(driver, "charts")


def _healthy(base: str, context: ssl.SSLContext) -> bool:
    try:
        return rest(base, "GET", "/healthz", context=context).status == 200
    except OSError:
        return False


def test_the_console_works_over_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    env = {
        **TEST_COORDINATOR_ENV,
        "XATM_AUTH_FILE": str(auth_file(tmp_path / "tokens.toml", TOKENS)),
        "XATM_TLS_CERT": str(certs.server_cert),
        "XATM_TLS_KEY": str(certs.server_key),
    }
    proc: Proc = coordinator_proc(tmp_path / "data", tmp_path, env=env)
    proc.start(wait=0)
    try:
        trusted = ssl.create_default_context(cafile=certs.ca)
        deadline = time.monotonic() + 30
        while not _healthy(f"https://{proc.http}", trusted):
            assert proc.alive and time.monotonic() < deadline, proc.tail()
            time.sleep(0.1)
        with chromium(insecure_certs=True) as driver:
            sign_in(driver, f"https://{proc.http}", VIEWER)
            wait_for(driver, "page-transactions")
            assert driver.current_url.startswith(f"https://{proc.http}/console/")
            wait_for(driver, "page-info", text="0 shown")
            with chromium(insecure_certs=True) as other:
                sign_in(other, f"https://{proc.http}", "wrong")
                wait_for(other, "signin-error", text="Sign-in refused")
    finally:
        proc.stop()
