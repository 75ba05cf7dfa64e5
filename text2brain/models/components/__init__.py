"""Parts shared by several heads of the zoo: vocabulary terms in text (`terms`, no
Lightning) and the Lightning base of the heads that read text as terms (`term_head`)."""
