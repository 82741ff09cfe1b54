"""The multi-process watchdog and supervisor's decisions, without processes: which peer is lost, when,
and the one line they print."""

from unclip_jax.distributed import EXIT_LOST
from unclip_jax.train import supervisor
from unclip_jax.train.watchdog import PeerWatchdog


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def watchdogs(tmp_path, clock, exits, **kw):
  """Process 0 and 1 of a 2-process job sharing one heartbeat folder (threads not started)."""
  made = []
  for i in range(2):
    dog = PeerWatchdog(tmp_path, i, 2, peer_timeout=20, step_timeout=60, clock=clock, exit=exits.append,
                       last_checkpoint=lambda: "step 4 in /w/checkpoints", **kw)
    dog.directory.mkdir(parents=True, exist_ok=True)
    made.append(dog)
  for dog in made:
    dog._peers = {1 - dog.index: (dog._read(1 - dog.index), clock())}
    dog._progress_at = clock()
  return made


def test_a_silent_peer_is_lost_after_the_timeout_and_a_beating_one_is_not(tmp_path):
  clock, exits = Clock(), []
  a, b = watchdogs(tmp_path, clock, exits)
  for _ in range(30):  # b beats every second for 30 s: alive
    clock.now += 1
    b._beat("alive")
    a.progress(1)
    assert a.check() is None
  clock.now += 19  # then b falls silent: not yet lost at 19 s...
  assert a.check() is None
  clock.now += 2  # ...lost past 20 s
  message = a.check()
  assert message.startswith("lost process 1 of 2: no heartbeat for 21 s") and "process 0 stops" in message


def test_a_finished_peer_is_not_watched_and_a_stale_file_is_no_sign_of_life(tmp_path):
  clock, exits = Clock(), []
  (tmp_path / "process_1").write_text("oldhost:1 57 done")  # left by an earlier run
  a, b = watchdogs(tmp_path, clock, exits)
  clock.now += 25
  assert "lost process 1" in a.check()  # the earlier run's "done" does not count for this one
  b._beat("alive")
  assert a.check() is None
  b._beat("done")
  assert a.check() is None
  clock.now += 1000
  a.progress(2)
  assert a.check() is None


def test_a_step_that_does_not_finish_is_a_hang_and_the_failure_prints_one_line(tmp_path, capfd):
  clock, exits = Clock(), []
  a, b = watchdogs(tmp_path, clock, exits)
  a.progress(7)
  for _ in range(61):
    clock.now += 1
    b._beat("alive")
  message = a.check()
  assert message.startswith("no training step finished for 61 s after step 7")
  a._fail(message)
  assert exits == [EXIT_LOST]
  err = capfd.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("error: no training step finished")
  assert err[0].endswith("Last complete checkpoint: step 4 in /w/checkpoints; rerun the same command on every host "
                         "to resume from it")


def test_the_supervisor_names_the_lost_process_from_jax_s_abort_message(tmp_path):
  leader = ("F1201 client.h:80] Terminating process because the JAX distributed service detected fatal errors. "
            "absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was "
            "preempted/died/restarted unexpectedly")
  assert supervisor.lost_process(leader, tmp_path, 1, 2).startswith("lost process 0 of 2: JAX's coordination")
  task = "Terminating process ... /job:jax_worker/replica:0/task:2 heartbeat timeout"
  assert supervisor.lost_process(task, tmp_path, 0, 4).startswith("lost process 2 of 4")
  (tmp_path / "process_1").write_text("h:1 5 alive")
  (tmp_path / "process_3").write_text("h:3 9 done")
  assert supervisor.lost_process("aborted", tmp_path, 0, 4).startswith("lost process 1 of 4: its heartbeat")
