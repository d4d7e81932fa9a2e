use crate::cli::images::Images;
use crate::cli::{Error, Format, GlobalOpts, ImagesArgs, LoadArgs, PullArgs, RmiArgs};

pub fn list(g: &GlobalOpts, a: ImagesArgs) -> Result<i32, Error> {
    let all = Images::open(&g.root)?.list()?;
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&all).expect("json"));
        return Ok(0);
    }
    if !a.quiet {
        println!("REPOSITORY:TAG   IMAGE ID   SIZE");
    }
    for i in all {
        println!("{i}");
    }
    Ok(0)
}

pub fn rmi(g: &GlobalOpts, a: RmiArgs) -> Result<i32, Error> {
    let images = Images::open(&g.root)?;
    super::each(&a.images, |r| images.remove(r, a.force))
}

pub fn load(g: &GlobalOpts, a: LoadArgs) -> Result<i32, Error> {
    for r in Images::open(&g.root)?.load(&a.input)? {
        println!("Loaded image: {r}");
    }
    Ok(0)
}

pub fn pull(g: &GlobalOpts, a: PullArgs) -> Result<i32, Error> {
    println!("{}", Images::open(&g.root)?.pull(&a.reference)?);
    Ok(0)
}
