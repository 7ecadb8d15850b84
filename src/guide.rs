// The user guide: the chapters of `docs/guide/`, compiled here so that
// every Rust code block in them is a doctest. The modules hold no items.
//
// Each chapter is a Markdown file that reads well on GitHub; its links to
// other chapters are reference links whose definitions (`[tasks]:
// tasks.md`) close the file. The definitions below come first in each
// module's docs, and the first definition of a label wins, so rustdoc links
// the same labels to the chapters' modules instead. A chapter behind a
// feature that is off keeps its `.md` link (no broken intra-doc link).

#![doc = "[index]: crate::guide\n\
         [tasks]: crate::guide::tasks\n\
         [actors]: crate::guide::actors\n\
         [objects]: crate::guide::objects\n\
         [supervision]: crate::guide::supervision\n\
         [observability]: crate::guide::observability\n"]
#![cfg_attr(feature = "cluster", doc = "[clusters]: crate::guide::clusters")]
#![cfg_attr(feature = "dashboard", doc = "[dashboard]: crate::guide::dashboard")]
#![cfg_attr(feature = "gpu", doc = "[gpus]: crate::guide::gpus")]
#![doc = ""]
#![doc = include_str!("../docs/guide/README.md")]

/// The labels of the chapters every build has, as rustdoc links (the
/// same as at the top of this file).
macro_rules! chapter_links {
    () => {
        "[index]: crate::guide\n\
         [tasks]: crate::guide::tasks\n\
         [actors]: crate::guide::actors\n\
         [objects]: crate::guide::objects\n\
         [supervision]: crate::guide::supervision\n\
         [observability]: crate::guide::observability\n"
    };
}

/// A chapter: a module whose docs are the links, then the Markdown file.
macro_rules! chapter {
    ($(#[$attr:meta])* $name:ident, $file:literal) => {
        $(#[$attr])*
        #[doc = chapter_links!()]
        #[cfg_attr(feature = "cluster", doc = "[clusters]: crate::guide::clusters")]
        #[cfg_attr(feature = "dashboard", doc = "[dashboard]: crate::guide::dashboard")]
        #[cfg_attr(feature = "gpu", doc = "[gpus]: crate::guide::gpus")]
        #[doc = ""]
        #[doc = include_str!($file)]
        pub mod $name {}
    };
}

chapter!(tasks, "../docs/guide/tasks.md");
chapter!(actors, "../docs/guide/actors.md");
chapter!(objects, "../docs/guide/objects.md");
chapter!(supervision, "../docs/guide/supervision.md");
chapter!(observability, "../docs/guide/observability.md");
chapter!(
    #[cfg(feature = "dashboard")]
    dashboard,
    "../docs/guide/dashboard.md"
);
chapter!(
    #[cfg(feature = "cluster")]
    clusters,
    "../docs/guide/clusters.md"
);
chapter!(
    #[cfg(feature = "gpu")]
    gpus,
    "../docs/guide/gpus.md"
);
