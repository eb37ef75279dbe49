//! The seed catalog: 65 reference models, 13 per category, generated from the tables
//! below. Generated rather than written out so that every model gets a distinct persona
//! and a spread of characteristics (age, ethnicity, lighting, framing) with no
//! copy-paste; the output is fixed — same code, same catalog, same ids.

use serde_json::json;

use super::Category;

/// One style of a category: `(slug, title, setting)`.
type Style = (&'static str, &'static str, &'static str);

const FASHION: [Style; 13] = [
    ("editorial", "Runway Editorial", "white cyclorama studio"),
    ("streetwear", "Urban Streetwear", "graffiti-lined city alley"),
    ("haute-couture", "Haute Couture", "baroque palace hall"),
    ("minimalist", "Minimalist Studio", "seamless grey backdrop"),
    ("vintage", "Vintage Revival", "1970s record store"),
    ("bohemian", "Bohemian Summer", "wildflower meadow at dusk"),
    ("avant-garde", "Avant-Garde Sculptural", "brutalist concrete gallery"),
    ("denim", "Denim Lookbook", "desert highway roadside"),
    ("evening-wear", "Evening Gala", "art deco ballroom"),
    ("knitwear", "Winter Knitwear", "snowy alpine chalet"),
    ("resort", "Resort Collection", "Mediterranean terrace"),
    ("tailoring", "Modern Tailoring", "glass-walled penthouse"),
    ("techwear", "Techwear Utility", "neon-lit metro station"),
];

const FITNESS: [Style; 13] = [
    ("yoga", "Sunrise Yoga", "beachside deck at sunrise"),
    ("crossfit", "Functional Strength", "industrial box gym"),
    ("running", "Marathon Runner", "city waterfront path"),
    ("pilates", "Reformer Pilates", "bright boutique studio"),
    ("bodybuilding", "Classic Physique", "competition stage"),
    ("boxing", "Boxing Conditioning", "old-school boxing ring"),
    ("cycling", "Road Cycling", "mountain pass switchbacks"),
    ("hiit", "HIIT Intensity", "rooftop training space"),
    ("climbing", "Bouldering", "indoor climbing wall"),
    ("swimming", "Open Water Swim", "lake at early morning"),
    ("dance-cardio", "Dance Cardio", "mirror-walled dance studio"),
    ("calisthenics", "Street Calisthenics", "outdoor bar park"),
    ("trail", "Trail Running", "forest single-track"),
];

const BEAUTY: [Style; 13] = [
    ("skincare", "Clean Skincare", "marble bathroom vanity"),
    ("glam", "Red Carpet Glam", "backstage dressing room"),
    ("natural-glow", "Natural Glow", "window-lit bedroom"),
    ("bridal", "Bridal Beauty", "garden wedding pavilion"),
    ("editorial-beauty", "Editorial Close-up", "beauty dish studio"),
    ("haircare", "Healthy Hair", "salon chair by a window"),
    ("fragrance", "Fragrance Campaign", "velvet-draped set"),
    ("nail-art", "Nail Art", "pastel tabletop set"),
    ("grooming", "Modern Grooming", "barbershop counter"),
    ("k-beauty", "Glass Skin", "soft pastel studio"),
    ("bold-lip", "Bold Lip", "high-contrast colour backdrop"),
    ("spa", "Spa Ritual", "steam room with cedar walls"),
    ("ageless", "Ageless Radiance", "sunlit reading room"),
];

const LIFESTYLE: [Style; 13] = [
    ("coffee-shop", "Coffee Shop Regular", "corner café with plants"),
    ("home-cooking", "Home Cook", "farmhouse kitchen"),
    ("traveler", "Weekend Traveler", "cobblestone old town"),
    ("family", "Family Moments", "living room on a Sunday"),
    ("outdoor", "Outdoor Adventurer", "pine forest campsite"),
    ("pet-owner", "Dog Park Days", "autumn city park"),
    ("commuter", "City Commuter", "tram stop at rush hour"),
    ("reader", "Book Lover", "independent bookshop"),
    ("gardener", "Urban Gardener", "rooftop vegetable garden"),
    ("festival", "Festival Season", "open-air music festival"),
    ("beach", "Beach Day", "golden-hour shoreline"),
    ("wellness", "Wellness Retreat", "mountain retreat lodge"),
    ("artist", "Studio Artist", "paint-splattered loft"),
];

const BUSINESS: [Style; 13] = [
    ("headshot", "Corporate Headshot", "neutral office backdrop"),
    ("founder", "Startup Founder", "exposed-brick co-working space"),
    ("consultant", "Strategy Consultant", "glass meeting room"),
    ("finance", "Finance Professional", "trading floor"),
    ("healthcare", "Healthcare Professional", "modern clinic corridor"),
    ("engineer", "Software Engineer", "open-plan tech office"),
    ("real-estate", "Real Estate Agent", "staged luxury home"),
    ("creative-director", "Creative Director", "design agency studio"),
    ("legal", "Legal Counsel", "wood-panelled law library"),
    ("speaker", "Keynote Speaker", "conference stage"),
    ("remote", "Remote Worker", "home office with bookshelves"),
    ("retail-owner", "Shop Owner", "independent boutique counter"),
    ("executive", "Executive Portrait", "boardroom at dusk"),
];

/// One persona per model: 65 distinct first names.
const PERSONAS: [&str; 65] = [
    "Ava", "Mateo", "Yuki", "Amara", "Lucas", "Priya", "Sofia", "Kwame", "Elena", "Jun", "Isabela", "Omar", "Freya",
    "Diego", "Aisha", "Noah", "Mei", "Tariq", "Chloe", "Ravi", "Zara", "Emeka", "Ingrid", "Hiroshi", "Lucia", "Malik",
    "Hana", "Santiago", "Leila", "Finn", "Nadia", "Kenji", "Camila", "Arjun", "Astrid", "Jamal", "Valentina", "Soo-ah",
    "Theo", "Fatima", "Rafael", "Anika", "Marcus", "Ines", "Dae-jung", "Olivia", "Kofi", "Mira", "Gabriel", "Layla",
    "Sven", "Adaeze", "Tomás", "Keiko", "Elijah", "Rosa", "Anders", "Zainab", "Henrik", "Lin", "Carmen", "Idris",
    "Maren", "Vikram", "Juliette",
];

const AGE_RANGES: [&str; 6] = ["18-24", "25-34", "25-34", "35-44", "45-54", "55-64"];
const ETHNICITIES: [&str; 10] = [
    "East Asian", "South Asian", "Black", "Hispanic/Latino", "Middle Eastern", "White", "Southeast Asian",
    "Mixed", "Indigenous", "Pacific Islander",
];
const GENDER_PRESENTATIONS: [&str; 3] = ["feminine", "masculine", "androgynous"];
const LIGHTING: [&str; 6] = ["soft daylight", "golden hour", "studio strobe", "moody low-key", "overcast diffuse", "neon accents"];
const FRAMING: [&str; 4] = ["full body", "three-quarter", "head and shoulders", "close-up"];
const MOODS: [&str; 6] = ["confident", "serene", "playful", "focused", "warm", "dramatic"];

/// A reference model as seeded.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedModel {
    pub id: String,
    pub name: String,
    pub category: Category,
    pub characteristics: serde_json::Value,
    pub complexity_factor_milli: i64,
    pub popularity: i64,
}

fn styles(category: Category) -> &'static [Style; 13] {
    match category {
        Category::Fashion => &FASHION,
        Category::Fitness => &FITNESS,
        Category::Beauty => &BEAUTY,
        Category::Lifestyle => &LIFESTYLE,
        Category::Business => &BUSINESS,
    }
}

/// Where a category's complexity starts: detailed wardrobes and close-up skin cost more
/// to reproduce than an office portrait.
fn complexity_base_milli(category: Category) -> i64 {
    match category {
        Category::Fashion => 1_300,
        Category::Beauty => 1_400,
        Category::Fitness => 1_100,
        Category::Lifestyle => 950,
        Category::Business => 800,
    }
}

/// A stable number from an id (FNV-1a), for values that should look varied.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The whole seed catalog, in a fixed order.
pub fn seed_models() -> Vec<SeedModel> {
    let mut models = Vec::with_capacity(PERSONAS.len());
    for (c, category) in Category::ALL.into_iter().enumerate() {
        for (s, (slug, title, setting)) in styles(category).iter().enumerate() {
            let i = c * 13 + s;
            let id = format!("{}-{slug}-01", category.as_str());
            let hash = stable_hash(&id);
            // 25-milli steps from the category's base, within 800–3000.
            let complexity = (complexity_base_milli(category) + ((hash % 61) as i64) * 25).clamp(800, 3_000);
            models.push(SeedModel {
                name: format!("{} · {title}", PERSONAS[i]),
                category,
                characteristics: json!({
                    "age_range": AGE_RANGES[(i * 5 + c) % AGE_RANGES.len()],
                    "ethnicity": ETHNICITIES[(i * 7 + 3) % ETHNICITIES.len()],
                    "gender_presentation": GENDER_PRESENTATIONS[(i + c) % GENDER_PRESENTATIONS.len()],
                    "style": title.to_lowercase(),
                    "setting": setting,
                    "lighting": LIGHTING[(i * 5 + 1) % LIGHTING.len()],
                    "framing": FRAMING[(i * 3 + c) % FRAMING.len()],
                    "mood": MOODS[(i * 11 + 2) % MOODS.len()],
                }),
                complexity_factor_milli: complexity,
                popularity: 50 + (hash >> 16) as i64 % 9_951,
                id,
            });
        }
    }
    models
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_catalog_is_large_varied_and_stable() {
        let models = seed_models();
        assert!(models.len() >= 60);
        for category in Category::ALL {
            assert!(models.iter().filter(|m| m.category == category).count() >= 12, "{category:?}");
        }
        let distinct = |f: &dyn Fn(&SeedModel) -> String| models.iter().map(f).collect::<HashSet<_>>().len();
        assert_eq!(distinct(&|m| m.id.clone()), models.len(), "ids are unique");
        assert_eq!(distinct(&|m| m.name.clone()), models.len(), "names are unique");
        assert!(distinct(&|m| m.characteristics["ethnicity"].to_string()) >= 8);
        assert!(distinct(&|m| m.characteristics["age_range"].to_string()) >= 5);
        for model in &models {
            assert!((800..=3_000).contains(&model.complexity_factor_milli), "{}", model.id);
            assert!((50..=10_000).contains(&model.popularity), "{}", model.id);
            assert!(application::storage::validate_key(&format!("reference-models/{}/preview.png", model.id)).is_ok());
        }
        assert_eq!(models, seed_models(), "deterministic");
        assert_eq!(models[0].id, "fashion-editorial-01");
    }
}
