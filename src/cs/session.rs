//! The rules of one session, as a pure state machine: what the Conversation
//! Server does on the inviting side when something happens on an invited
//! leg (OMA CPM Appendix C.1, steps 6-15).
//!
//! A session has one upstream side (the INVITE the CS received) and one or
//! more downstream legs (the INVITEs it sent): one per registered device of
//! the invited user for a Participating Function (seed 5.2.5: parallel
//! forking, one leg when the user is reached at the Request-URI), one per
//! other member for the Controlling Function of a pre-defined group. Both
//! are back-to-back user agents over the same rules, which for a single leg
//! reduce to plain relaying (its 180 is the first 180, its 200 the first
//! 200, its failure the failure of every leg). What differs, [`Mode`] says:
//! - a Participating Function joins one leg only: the first 2xx wins and
//!   every other pending leg is CANCELled at once (RFC 3261 §16.7 step 10,
//!   a proxy's forking as a B2BUA does it); a 6xx from any device ends the
//!   search too (§16.7 step 5: CANCEL the rest, the 6xx goes upstream);
//! - a Controlling Function keeps the session up when a member leaves, and
//!   ends it when the last one has; a Participating Function ends both
//!   sides when either hangs up;
//! - a Controlling Function gives up on a silent member after the invite
//!   timeout (CANCEL); a Participating Function leaves that to the
//!   transaction timers, the invited user's client may ring for long.
//!
//! Inputs are [`Session`] methods; each returns the [`Action`]s the server
//! must carry out, in order. Nothing here knows SIP bytes.
//!
//! Invariants (checked by [`Session::assert_invariants`]): the upstream is
//! answered at most once (one 180, one final); a leg leaves `Calling` /
//! `Ringing` exactly once; an ended session has no leg in `Calling`,
//! `Ringing` or `Joined`.

/// Which function's rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Participating Function: one leg per device, the first answer joins.
    Participating,
    /// Controlling Function of a group: one leg per invited member.
    Controlling,
}

/// Where one downstream leg stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegState {
    /// INVITE sent, no provisional with a tag yet.
    Calling,
    /// A provisional came (180/183).
    Ringing,
    /// Answered 2xx and ACKed: in the participant set.
    Joined,
    /// CANCEL sent (inviter's CANCEL or invite timeout): a 2xx that still
    /// comes is ACKed and BYEd.
    Cancelled,
    /// A final non-2xx (or a timeout): out of the pending set with this
    /// status.
    Failed(u16),
    /// Joined, then BYE (theirs or ours).
    Left,
}

impl LegState {
    fn pending(self) -> bool {
        matches!(self, LegState::Calling | LegState::Ringing)
    }
}

/// What the server must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `180 Ringing` upstream (once per session); leg `leg` rang
    /// first (a Participating Function shows its Contact parameters).
    RingUpstream { leg: usize },
    /// Send `200 OK` upstream with the answer leg `leg` gave.
    AnswerUpstream { leg: usize },
    /// Send this final error upstream. `leg`: the leg whose own final
    /// response this is (a Participating Function relays its reason phrase
    /// and Warnings); `None` when the CS speaks for itself.
    FailUpstream {
        code: u16,
        reason: &'static str,
        leg: Option<usize>,
    },
    /// Answer the upstream's CANCEL (the INVITE gets 487).
    TerminateUpstream,
    /// ACK leg `leg`'s 2xx.
    AckLeg { leg: usize },
    /// BYE leg `leg` (after its ACK if it was just answered).
    ByeLeg { leg: usize },
    /// CANCEL leg `leg`'s INVITE.
    CancelLeg { leg: usize },
    /// BYE the upstream side.
    ByeUpstream,
    /// The participant set changed (conference state).
    Changed,
    /// Nothing more will happen: forget the session.
    End,
}

/// Where the upstream side stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// INVITE received, no final sent.
    Inviting { rang: bool },
    /// 200 sent: the session is up.
    Answered,
    /// A final error sent, or CANCELled, or BYE (either way): over.
    Over,
}

/// One session's state: upstream and legs.
#[derive(Clone, Debug)]
pub struct Session {
    mode: Mode,
    upstream: Upstream,
    legs: Vec<LegState>,
    /// Most legs joined at once (the group's maximum participants less the
    /// inviter; 1 for a Participating Function); beyond it a 2xx is ACKed
    /// and BYEd.
    max_joined: usize,
    /// The leg whose answer went upstream: a Participating Function's
    /// other side for in-dialog requests.
    answered: Option<usize>,
}

impl Session {
    /// A session whose INVITE went out on `legs` legs. A Participating
    /// Function joins one leg whatever `max_joined` says.
    pub fn new(mode: Mode, legs: usize, max_joined: usize) -> Session {
        assert!(legs >= 1, "a session invites someone");
        let max_joined = match mode {
            Mode::Participating => 1,
            Mode::Controlling => max_joined.max(1),
        };
        Session {
            mode,
            upstream: Upstream::Inviting { rang: false },
            legs: vec![LegState::Calling; legs],
            max_joined,
            answered: None,
        }
    }

    /// Which function's rules these are.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Where the upstream side stands.
    pub fn upstream(&self) -> Upstream {
        self.upstream
    }
    /// Every leg's state, in the order the INVITEs went out.
    pub fn legs(&self) -> &[LegState] {
        &self.legs
    }
    /// Leg `i`'s state, if there is such a leg.
    pub fn leg(&self, i: usize) -> Option<LegState> {
        self.legs.get(i).copied()
    }
    /// The leg whose 2xx answered the upstream, once one has.
    pub fn answered(&self) -> Option<usize> {
        self.answered
    }
    /// Nothing can happen any more: the upstream is over and no leg can
    /// still answer (a CANCELled leg may yet send a 2xx to ACK and BYE).
    pub fn is_over(&self) -> bool {
        let open =
            |l: &LegState| l.pending() || matches!(l, LegState::Cancelled | LegState::Joined);
        self.upstream == Upstream::Over && !self.legs.iter().any(open)
    }
    fn joined(&self) -> usize {
        self.legs.iter().filter(|l| **l == LegState::Joined).count()
    }

    /// C.1 step 7-8: a provisional with a tag from leg `i`: the first one
    /// of the session is passed upstream as one 180.
    pub fn on_ringing(&mut self, i: usize) -> Vec<Action> {
        let Some(leg) = self.legs.get_mut(i) else {
            return Vec::new();
        };
        if *leg == LegState::Calling {
            *leg = LegState::Ringing;
        }
        match self.upstream {
            Upstream::Inviting { rang: false } => {
                self.upstream = Upstream::Inviting { rang: true };
                vec![Action::RingUpstream { leg: i }, Action::Changed]
            }
            _ => Vec::new(),
        }
    }

    /// C.1 steps 9-12: a 2xx from leg `i` (each one, retransmissions
    /// included: the ACK is always sent again, the rest happens once).
    pub fn on_answer(&mut self, i: usize) -> Vec<Action> {
        let Some(state) = self.leg(i) else {
            return Vec::new();
        };
        let mut out = vec![Action::AckLeg { leg: i }];
        match state {
            LegState::Calling | LegState::Ringing => self.join(i, &mut out),
            // A 2xx after our CANCEL, after the session ended, or from a
            // leg that already failed (a fork): ACK, then BYE (C.1, RFC
            // 3261 §15: the UAC ends an unwanted session with BYE).
            LegState::Cancelled | LegState::Failed(_) => {
                self.legs[i] = LegState::Left;
                out.push(Action::ByeLeg { leg: i });
            }
            // A 2xx retransmission: the ACK again, nothing else.
            LegState::Joined | LegState::Left => {}
        }
        self.finish(&mut out);
        out
    }

    fn join(&mut self, i: usize, out: &mut Vec<Action>) {
        let room = self.joined() < self.max_joined;
        match self.upstream {
            Upstream::Over => {
                self.legs[i] = LegState::Left;
                out.push(Action::ByeLeg { leg: i });
            }
            _ if !room => {
                self.legs[i] = LegState::Left;
                out.push(Action::ByeLeg { leg: i });
            }
            Upstream::Inviting { .. } => {
                self.legs[i] = LegState::Joined;
                self.upstream = Upstream::Answered;
                self.answered = Some(i);
                out.push(Action::AnswerUpstream { leg: i });
                out.push(Action::Changed);
                // A Participating Function's other devices stop ringing
                // (RFC 3261 §16.7 step 10); a Controlling Function keeps
                // inviting the other members (C.1 step 12).
                if self.mode == Mode::Participating {
                    self.cancel_pending(out);
                }
            }
            Upstream::Answered => {
                self.legs[i] = LegState::Joined;
                out.push(Action::Changed);
            }
        }
    }

    /// C.1 step 13 and the error case: a final non-2xx from leg `i` (or
    /// its timeout: `408`).
    pub fn on_failure(&mut self, i: usize, code: u16) -> Vec<Action> {
        let mut out = Vec::new();
        match self.leg(i) {
            Some(LegState::Calling | LegState::Ringing) => {
                self.legs[i] = LegState::Failed(code);
                out.push(Action::Changed);
                // A device's 6xx speaks for the user everywhere (RFC 3261
                // §16.7 step 5): the other devices are CANCELled, and the
                // 6xx goes upstream now.
                if self.mode == Mode::Participating && (600..700).contains(&code) {
                    self.cancel_pending(&mut out);
                }
            }
            // Our CANCEL's 487: out for good now (the conference state
            // says so); nothing to tell the inviter.
            Some(LegState::Cancelled) => {
                self.legs[i] = LegState::Failed(code);
                out.push(Action::Changed);
            }
            _ => return out,
        }
        self.fail_upstream_if_nobody_left(&mut out);
        self.finish(&mut out);
        out
    }

    /// Every leg failed before anyone answered: the inviter gets a final
    /// error. One shared code says it (all busy: 486); a mix says 480; for
    /// a Participating Function a 6xx wins (RFC 3261 §16.7 step 6), and the
    /// final response relayed is that of the first leg with the code chosen.
    fn fail_upstream_if_nobody_left(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.upstream, Upstream::Inviting { .. }) {
            return;
        }
        if self
            .legs
            .iter()
            .any(|l| l.pending() || *l == LegState::Joined)
        {
            return;
        }
        let code = self.chosen_failure();
        let leg = match self.mode {
            Mode::Participating => self.legs.iter().position(|l| *l == LegState::Failed(code)),
            Mode::Controlling => None,
        };
        self.upstream = Upstream::Over;
        out.push(Action::FailUpstream {
            code,
            reason: failure_reason(self.mode, code),
            leg,
        });
    }

    /// The final status that speaks for every failed leg.
    fn chosen_failure(&self) -> u16 {
        let codes = || {
            self.legs.iter().filter_map(|l| match l {
                LegState::Failed(c) => Some(*c),
                _ => None,
            })
        };
        if self.mode == Mode::Participating {
            if let Some(global) = codes().find(|c| (600..700).contains(c)) {
                return global;
            }
        }
        let mut all = codes();
        let first = all.next().unwrap_or(480);
        if all.all(|c| c == first) {
            first
        } else {
            480
        }
    }

    /// The invite timeout of leg `i` (Controlling Function, C.1 step 13:
    /// no answer): CANCEL it; it leaves the pending set now.
    pub fn on_invite_timeout(&mut self, i: usize) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.leg(i).is_some_and(LegState::pending) {
            return out;
        }
        self.legs[i] = LegState::Cancelled;
        out.push(Action::CancelLeg { leg: i });
        out.push(Action::Changed);
        self.fail_upstream_if_nobody_left(&mut out);
        out
    }

    /// C.1 step 14: the inviter's CANCEL before the session is answered:
    /// CANCEL every pending leg. After the 200 a CANCEL changes nothing
    /// (RFC 3261 §9.2).
    pub fn on_upstream_cancel(&mut self) -> Vec<Action> {
        if !matches!(self.upstream, Upstream::Inviting { .. }) {
            return Vec::new();
        }
        self.upstream = Upstream::Over;
        let mut out = vec![Action::TerminateUpstream];
        self.cancel_pending(&mut out);
        out.push(Action::Changed);
        self.finish(&mut out);
        out
    }

    fn bye_joined(&mut self, out: &mut Vec<Action>) {
        for i in 0..self.legs.len() {
            if self.legs[i] == LegState::Joined {
                self.legs[i] = LegState::Left;
                out.push(Action::ByeLeg { leg: i });
            }
        }
    }

    fn cancel_pending(&mut self, out: &mut Vec<Action>) {
        for i in 0..self.legs.len() {
            if self.legs[i].pending() {
                self.legs[i] = LegState::Cancelled;
                out.push(Action::CancelLeg { leg: i });
            }
        }
    }

    /// C.1 step 15: the inviter's BYE: BYE every joined member and cancel
    /// whoever is still being invited.
    pub fn on_upstream_bye(&mut self) -> Vec<Action> {
        if self.upstream == Upstream::Over {
            return Vec::new();
        }
        self.upstream = Upstream::Over;
        let mut out = Vec::new();
        self.bye_joined(&mut out);
        self.cancel_pending(&mut out);
        out.push(Action::Changed);
        self.finish(&mut out);
        out
    }

    /// A member's BYE: that member leaves. A Participating Function (its
    /// one joined leg) passes the BYE upstream; a Controlling Function does so when
    /// the last member has left and nobody is still being invited.
    pub fn on_leg_bye(&mut self, i: usize) -> Vec<Action> {
        let mut out = Vec::new();
        if self.leg(i) != Some(LegState::Joined) {
            return out;
        }
        self.legs[i] = LegState::Left;
        out.push(Action::Changed);
        let alone = !self
            .legs
            .iter()
            .any(|l| l.pending() || *l == LegState::Joined);
        if self.upstream == Upstream::Answered && (self.mode == Mode::Participating || alone) {
            self.upstream = Upstream::Over;
            self.cancel_pending(&mut out);
            out.push(Action::ByeUpstream);
        }
        self.finish(&mut out);
        out
    }

    /// The upstream never ACKed our 200 (64·T1): end the session as a UAS
    /// must (RFC 3261 §13.3.1.4).
    pub fn on_upstream_ack_timeout(&mut self) -> Vec<Action> {
        if self.upstream != Upstream::Answered {
            return Vec::new();
        }
        let mut out = vec![Action::ByeUpstream];
        self.upstream = Upstream::Over;
        self.bye_joined(&mut out);
        self.cancel_pending(&mut out);
        out.push(Action::Changed);
        self.finish(&mut out);
        out
    }

    fn finish(&self, out: &mut Vec<Action>) {
        if self.is_over() && !out.contains(&Action::End) {
            out.push(Action::End);
        }
    }

    /// The invariants of the module doc (for tests and the fuzz target).
    pub fn assert_invariants(&self) {
        assert!(!self.legs.is_empty());
        assert!(self.joined() <= self.max_joined);
        assert!(self.mode == Mode::Controlling || self.max_joined == 1);
        if let Some(i) = self.answered {
            assert!(i < self.legs.len());
            assert!(
                matches!(self.legs[i], LegState::Joined | LegState::Left),
                "the answering leg left Calling/Ringing by its 2xx"
            );
        }
        if self.upstream == Upstream::Answered {
            assert!(self.answered.is_some(), "answered by no leg");
        }
        if self.mode == Mode::Participating && self.answered.is_some() {
            // Once answered, a Participating Function rings no other device.
            assert!(
                !self.legs.iter().any(|l| l.pending()),
                "a device still ringing after another answered"
            );
        }
        if self.upstream == Upstream::Over {
            assert!(
                self.joined() == 0 || self.mode == Mode::Controlling,
                "a participating session over with a joined leg"
            );
        }
        if matches!(self.upstream, Upstream::Inviting { .. }) {
            assert_eq!(self.joined(), 0, "joined before the upstream was answered");
        }
    }
}

/// The reason phrase of the final error when every leg failed.
fn failure_reason(mode: Mode, code: u16) -> &'static str {
    match (mode, code) {
        (Mode::Controlling, 486) => "Busy Here - Every Member Busy",
        (Mode::Controlling, 603) => "Decline - Every Member Declined",
        (Mode::Controlling, 408) => "Request Timeout - No Member Answered",
        (Mode::Controlling, 480) => "Temporarily Unavailable - No Member Joined",
        (_, c) => crate::sip::reply::reason_phrase(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn group(n: usize) -> Session {
        Session::new(Mode::Controlling, n, 100)
    }

    #[test]
    fn first_180_once_first_200_answers_later_200s_join() {
        let mut s = group(4);
        assert_eq!(s.on_ringing(0), vec![RingUpstream { leg: 0 }, Changed]);
        assert_eq!(s.on_ringing(1), vec![]);
        assert_eq!(
            s.on_answer(0),
            vec![AckLeg { leg: 0 }, AnswerUpstream { leg: 0 }, Changed]
        );
        assert_eq!(s.on_answer(1), vec![AckLeg { leg: 1 }, Changed]);
        // A retransmitted 2xx is ACKed again and changes nothing.
        assert_eq!(s.on_answer(1), vec![AckLeg { leg: 1 }]);
        assert_eq!(s.on_failure(2, 486), vec![Changed]);
        assert_eq!(s.upstream(), Upstream::Answered);
        s.assert_invariants();
        // The silent member times out: CANCEL, and its 487 is quiet.
        assert_eq!(s.on_invite_timeout(3), vec![CancelLeg { leg: 3 }, Changed]);
        assert_eq!(s.on_failure(3, 487), vec![Changed]);
        // The inviter's BYE ends both joined legs.
        assert_eq!(
            s.on_upstream_bye(),
            vec![ByeLeg { leg: 0 }, ByeLeg { leg: 1 }, Changed, End]
        );
        assert!(s.is_over());
        s.assert_invariants();
    }

    #[test]
    fn every_member_failing_fails_the_inviter_once() {
        let mut s = group(2);
        assert_eq!(s.on_failure(0, 486), vec![Changed]);
        let out = s.on_failure(1, 486);
        assert_eq!(
            out,
            vec![
                Changed,
                FailUpstream {
                    code: 486,
                    reason: "Busy Here - Every Member Busy",
                    leg: None
                },
                End
            ]
        );
        let mut s = group(2);
        s.on_failure(0, 486);
        assert!(matches!(
            s.on_failure(1, 603)[1],
            FailUpstream { code: 480, .. }
        ));
    }

    #[test]
    fn every_member_timing_out_fails_after_the_last_cancel() {
        let mut s = group(2);
        s.on_invite_timeout(0);
        let out = s.on_invite_timeout(1);
        assert!(matches!(out[2], FailUpstream { code: 480, .. }));
        assert!(!s.is_over() || s.legs().iter().all(|l| !l.pending()));
        assert_eq!(s.on_failure(0, 487), vec![Changed]);
        assert_eq!(s.on_failure(1, 487), vec![Changed, End]);
    }

    #[test]
    fn inviter_cancel_cancels_every_pending_leg_and_a_late_2xx_is_acked_then_byed() {
        let mut s = group(3);
        s.on_ringing(1);
        s.on_failure(2, 603);
        assert_eq!(
            s.on_upstream_cancel(),
            vec![
                TerminateUpstream,
                CancelLeg { leg: 0 },
                CancelLeg { leg: 1 },
                Changed
            ]
        );
        assert_eq!(s.on_answer(0), vec![AckLeg { leg: 0 }, ByeLeg { leg: 0 }]);
        assert_eq!(s.on_failure(1, 487), vec![Changed, End]);
        // A CANCEL after the 200 changes nothing.
        let mut s = group(1);
        s.on_answer(0);
        assert_eq!(s.on_upstream_cancel(), vec![]);
    }

    #[test]
    fn a_member_leaving_keeps_the_group_until_the_last_one() {
        let mut s = group(2);
        s.on_answer(0);
        s.on_answer(1);
        assert_eq!(s.on_leg_bye(0), vec![Changed]);
        assert_eq!(s.on_leg_bye(0), vec![]);
        assert_eq!(s.on_leg_bye(1), vec![Changed, ByeUpstream, End]);
    }

    #[test]
    fn participating_mirrors_its_one_leg() {
        let mut s = Session::new(Mode::Participating, 1, 1);
        s.on_answer(0);
        assert_eq!(s.on_leg_bye(0), vec![Changed, ByeUpstream, End]);
        let mut s = Session::new(Mode::Participating, 1, 1);
        assert_eq!(
            s.on_failure(0, 404),
            vec![
                Changed,
                FailUpstream {
                    code: 404,
                    reason: "Not Found",
                    leg: Some(0)
                },
                End
            ]
        );
    }

    #[test]
    fn beyond_the_maximum_a_2xx_is_acked_and_byed() {
        let mut s = Session::new(Mode::Controlling, 3, 2);
        s.on_answer(0);
        s.on_answer(1);
        assert_eq!(s.on_answer(2), vec![AckLeg { leg: 2 }, ByeLeg { leg: 2 }]);
        s.assert_invariants();
    }

    #[test]
    fn no_ack_for_our_200_ends_everything() {
        let mut s = group(2);
        s.on_answer(0);
        assert_eq!(
            s.on_upstream_ack_timeout(),
            vec![
                ByeUpstream,
                ByeLeg { leg: 0 },
                CancelLeg { leg: 1 },
                Changed
            ]
        );
        assert_eq!(s.on_failure(1, 487), vec![Changed, End]);
    }

    /// A Participating Function forking to `n` devices (seed 5.2.5).
    fn devices(n: usize) -> Session {
        Session::new(Mode::Participating, n, 1)
    }

    #[test]
    fn a_fork_rings_upstream_once_the_first_answer_wins_and_the_others_are_cancelled() {
        let mut s = devices(3);
        assert_eq!(s.on_ringing(2), vec![RingUpstream { leg: 2 }, Changed]);
        assert_eq!(s.on_ringing(0), vec![]);
        assert_eq!(
            s.on_answer(1),
            vec![
                AckLeg { leg: 1 },
                AnswerUpstream { leg: 1 },
                Changed,
                CancelLeg { leg: 0 },
                CancelLeg { leg: 2 }
            ]
        );
        assert_eq!(s.answered(), Some(1));
        assert_eq!(
            s.legs(),
            &[LegState::Cancelled, LegState::Joined, LegState::Cancelled]
        );
        s.assert_invariants();
        // The losers' 487s are quiet; the session stays with the winner.
        assert_eq!(s.on_failure(0, 487), vec![Changed]);
        assert_eq!(s.on_failure(2, 487), vec![Changed]);
        assert_eq!(s.upstream(), Upstream::Answered);
        // The winner hangs up: upstream BYE, over.
        assert_eq!(s.on_leg_bye(1), vec![Changed, ByeUpstream, End]);
        s.assert_invariants();
    }

    #[test]
    fn a_fork_acks_and_byes_a_late_2xx_from_a_cancelled_device() {
        let mut s = devices(2);
        s.on_answer(0);
        // Device 1 answered before our CANCEL reached it.
        assert_eq!(s.on_answer(1), vec![AckLeg { leg: 1 }, ByeLeg { leg: 1 }]);
        assert_eq!(s.leg(1), Some(LegState::Left));
        // Its 2xx retransmission: the ACK again only.
        assert_eq!(s.on_answer(1), vec![AckLeg { leg: 1 }]);
        // The inviter's BYE ends the winner; nothing waits any more.
        assert_eq!(s.on_upstream_bye(), vec![ByeLeg { leg: 0 }, Changed, End]);
        s.assert_invariants();
    }

    #[test]
    fn a_fork_fails_upstream_once_when_every_device_failed() {
        // One shared code: that code, relayed from the first leg with it.
        let mut s = devices(3);
        assert_eq!(s.on_failure(1, 486), vec![Changed]);
        assert_eq!(s.on_failure(0, 486), vec![Changed]);
        assert_eq!(s.upstream(), Upstream::Inviting { rang: false });
        assert_eq!(
            s.on_failure(2, 486),
            vec![
                Changed,
                FailUpstream {
                    code: 486,
                    reason: "Busy Here",
                    leg: Some(0)
                },
                End
            ]
        );
        // A mix: 480, spoken by the CS itself.
        let mut s = devices(2);
        s.on_failure(0, 486);
        assert_eq!(
            s.on_failure(1, 404),
            vec![
                Changed,
                FailUpstream {
                    code: 480,
                    reason: "Temporarily Unavailable",
                    leg: None
                },
                End
            ]
        );
        // A timeout and a busy: 480 too.
        let mut s = devices(2);
        s.on_failure(0, 408);
        assert!(matches!(
            s.on_failure(1, 486)[1],
            FailUpstream { code: 480, .. }
        ));
    }

    #[test]
    fn a_fork_ends_at_a_6xx_which_cancels_the_other_devices_and_wins() {
        let mut s = devices(3);
        s.on_ringing(0);
        assert_eq!(s.on_failure(2, 486), vec![Changed]);
        assert_eq!(
            s.on_failure(1, 603),
            vec![
                Changed,
                CancelLeg { leg: 0 },
                FailUpstream {
                    code: 603,
                    reason: "Decline",
                    leg: Some(1)
                }
            ]
        );
        // The cancelled device's 487 closes the session; a late 2xx from
        // it would be ACKed and BYEd.
        assert_eq!(s.on_failure(0, 487), vec![Changed, End]);
        s.assert_invariants();
        // A Controlling Function does not give a member's 603 that weight.
        let mut g = group(2);
        assert_eq!(g.on_failure(0, 603), vec![Changed]);
        assert_eq!(g.leg(1), Some(LegState::Calling));
    }

    #[test]
    fn an_upstream_cancel_cancels_every_device() {
        let mut s = devices(3);
        s.on_ringing(1);
        s.on_failure(2, 486);
        assert_eq!(
            s.on_upstream_cancel(),
            vec![
                TerminateUpstream,
                CancelLeg { leg: 0 },
                CancelLeg { leg: 1 },
                Changed
            ]
        );
        assert_eq!(s.on_answer(1), vec![AckLeg { leg: 1 }, ByeLeg { leg: 1 }]);
        assert_eq!(s.on_failure(0, 487), vec![Changed, End]);
        s.assert_invariants();
    }

    #[test]
    fn arbitrary_event_orders_keep_the_invariants() {
        use proptest::prelude::*;
        proptest!(|(n in 1usize..5, fork in any::<bool>(), evs in proptest::collection::vec((0u8..7, 0usize..5, 300u16..700), 0..40))| {
            let mode = if n == 1 || fork { Mode::Participating } else { Mode::Controlling };
            let mut s = Session::new(mode, n, 3);
            let (mut finals, mut rings) = (0, 0);
            for (e, i, code) in evs {
                let out = match e {
                    0 => s.on_ringing(i),
                    1 => s.on_answer(i),
                    2 => s.on_failure(i, code),
                    3 => s.on_invite_timeout(i),
                    4 => s.on_upstream_cancel(),
                    5 => s.on_upstream_bye(),
                    _ => s.on_leg_bye(i),
                };
                finals += out.iter().filter(|a| matches!(a, AnswerUpstream{..} | FailUpstream{..} | TerminateUpstream)).count();
                rings += out.iter().filter(|a| matches!(a, RingUpstream{..})).count();
                s.assert_invariants();
            }
            prop_assert!(finals <= 1);
            prop_assert!(rings <= 1);
        });
    }
}
