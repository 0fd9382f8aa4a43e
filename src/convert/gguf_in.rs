//! Not written yet on this commit (see the branch's later commits).
